"""How long should stage 1 (pretraining) run? K-means at K on the latent after each step budget (issue 13/14).

Today's default is 60 epochs whatever the data size: 60 optimizer steps for 250 cells, 2,040 for
8,600. For every dataset and seed, the default pipeline (consensus pseudo-labels, F-test, gene
order, SA-CC + autoencoder) pretrains once for the largest budget and, at each budget of
``--checks`` optimizer steps (batch 256) and at the default (60 epochs), K-means (20 inits, the
seed as random state) clusters the latent; the ARI is scored against the true labels, which
steer nothing (the budgets are fixed in advance). Stage 2 is not run: the diagnosis page shows it
changes the ARI by ~0.

The table also shows a candidate rule, ``min(1000 steps, 250 epochs)``, read off the checkpoints.
Datasets are grouped by the halves of ``benchmarks/split.json``: a rule chosen on the tuning
half must hold on the confirmation half.

    python benchmarks/pretrain_steps.py --half tuning
    python benchmarks/pretrain_steps.py --half confirmation --checks 60 250 1000 --out /tmp/conf.json
    python benchmarks/pretrain_steps.py --merge /tmp/tuning.json /tmp/conf.json
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from common import (datasets, finish, load, markdown_table, mean_sd, merge_records, page_parser, read_records, score,
                    split_datasets, split_of, training_threads, write_json)
from sccsa_train import SCCSA
from sccsa_train import estimator as estimator_module
from sccsa_train import fit as fit_module
from sccsa_train.objective import reconstruction_loss
from sccsa_train.options import default

DEFAULT_EPOCHS = default("pretrain_epochs")
RULE_STEPS, RULE_EPOCHS = 1000, 250


def rule_steps(epoch_steps: int) -> int:
    """The candidate budget: 1000 optimizer steps, but at most 250 epochs."""
    return min(RULE_STEPS, RULE_EPOCHS * epoch_steps)


def checkpoint_latents(adata, kind: str, k: int, seed: int,
                       checks: list[int]) -> tuple[dict[int, Any], dict[str, int], np.ndarray]:
    """Pretrain the default model up to the largest budget; the latent (and reconstruction MSE) at
    every checkpoint, the default's step count, and the rows that were fitted."""
    captured: dict[int, Any] = {}
    info: dict[str, int] = {}

    def pretrain_only(make_net, cells, schedule, *, seed=0, **_):
        x = cells.dense()  # the small data of these pages fit in memory whole
        fit_module.seed_everything(seed)
        net = make_net()
        fit_module.seed_everything(seed)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(net.parameters(), lr=schedule.pretrain_lr)
        epoch_steps = len(fit_module._batches(x.shape[0], schedule.batch_size, torch.Generator().manual_seed(0)))
        info["default"] = DEFAULT_EPOCHS * epoch_steps
        info["rule"] = rule_steps(epoch_steps)
        wanted = sorted({*checks, info["default"], info["rule"]})
        step = 0
        net.train()
        while step < wanted[-1]:
            for index in fit_module._batches(x.shape[0], schedule.batch_size, generator):
                batch = x[index]
                loss = reconstruction_loss(net(batch).reconstruction, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step in wanted:
                    latent, _ = fit_module.embed_all(net, cells)
                    with torch.no_grad():
                        net.eval()
                        mse = float(reconstruction_loss(net(x).reconstruction, x))
                        net.train()
                    captured[step] = (latent.cpu().numpy().astype(np.float64), mse)
                if step >= wanted[-1]:
                    break
        return net, np.zeros(x.shape[0], dtype=np.int64), fit_module.History(), None  # no stage-2 embedding

    original = estimator_module.train
    estimator_module.train = pretrain_only
    try:
        model = SCCSA(k, input_kind=kind, random_state=seed, progress=False, cluster_epochs=0).fit(adata)
    finally:
        estimator_module.train = original
    return captured, info, model._fit_rows


def dataset_records(adata, truth: np.ndarray, k: int, kind: str, seed: int, checks: list[int]) -> list[dict[str, Any]]:
    started = time.perf_counter()
    captured, info, rows = checkpoint_latents(adata, kind, k, seed, checks)
    truth = truth[rows]
    records = []
    for step, (latent, mse) in sorted(captured.items()):
        labels = KMeans(k, n_init=20, random_state=seed).fit_predict(latent)
        records.append({"step": step, "default_step": info["default"], "rule_step": info["rule"],
                        **score(truth, labels), "silhouette": round(float(silhouette_score(latent, labels)), 4),
                        "reconstruction": round(mse, 5)})
    for record in records:
        record.update(seconds=round(time.perf_counter() - started, 1), torch_threads=training_threads())
    return records


def _pick(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame[frame["step"] == frame[column]].assign(budget=column.replace("_step", ""))


def summarise(records: list[dict[str, Any]]) -> str:
    frame = pd.DataFrame(records)
    frame["half"] = [split_of(d) for d in frame["dataset"]]
    fixed = sorted(s for s in frame["step"].unique() if (frame["step"] == s).groupby(frame["dataset"]).any().all())
    columns = [*(f"{s} steps" for s in fixed), "default (60 epochs)",
               f"rule min({RULE_STEPS} steps, {RULE_EPOCHS} epochs)"]
    parts = []
    table = {}
    for dataset, group in frame.groupby("dataset"):
        row = {"half": split_of(dataset), "cells": None}
        for s in fixed:
            row[f"{s} steps"] = mean_sd(group[group["step"] == s]["ari"])
        row[columns[-2]] = mean_sd(_pick(group, "default_step")["ari"])
        row[columns[-1]] = mean_sd(_pick(group, "rule_step")["ari"])
        row["default / rule steps"] = f"{int(group['default_step'].iloc[0])} / {int(group['rule_step'].iloc[0])}"
        row.pop("cells")
        table[dataset] = row
    out = pd.DataFrame.from_dict(table, orient="index").sort_values("half", ascending=False)
    out.index.name = "dataset"
    for half in ("tuning", "confirmation"):
        part = frame[frame["half"] == half]
        if part.empty:
            continue
        means = {f"{s} steps": f"**{part[part['step'] == s].groupby('dataset')['ari'].mean().mean():.3f}**"
                 for s in fixed}
        means[columns[-2]] = f"**{_pick(part, 'default_step').groupby('dataset')['ari'].mean().mean():.3f}**"
        means[columns[-1]] = f"**{_pick(part, 'rule_step').groupby('dataset')['ari'].mean().mean():.3f}**"
        out.loc[f"**mean, {half} half ({part['dataset'].nunique()})**"] = {"half": half, **means,
                                                                            "default / rule steps": ""}
    seeds = sorted(frame["seed"].unique())
    parts.append(f"Protocol U, K = number of true labels, seeds {', '.join(map(str, seeds))}; ARI of K-means "
                 "(20 inits) "
                 "on the pretrained latent at each budget of optimizer steps (batch 256), stage 2 not run. `default`: "
                 f"today's {DEFAULT_EPOCHS} epochs; `rule`: min({RULE_STEPS} steps, {RULE_EPOCHS} epochs). Mean ± sd "
                 "over seeds; a value without ± comes from one seed.")
    parts.append("## ARI by pretraining budget\n\n" + markdown_table(out))
    parts.append(_starts_section(frame, seeds))
    return "\n\n".join(parts)


def chosen_by_silhouette(rows: pd.DataFrame) -> float:
    """ARI of the start (one row per seed) whose K-means partition has the highest silhouette."""
    return float(rows.loc[rows["silhouette"].idxmax(), "ari"])


def _starts_section(frame: pd.DataFrame, seeds: list[int]) -> str:
    """The seeds' pretrained networks read as the starts of one run with ``pretrain_starts`` = number
    of seeds: the ARI of the start the silhouette picks, beside the mean over starts."""
    table: dict[str, dict[str, Any]] = {}
    for budget, name in (("default_step", "default"), ("rule_step", "rule")):
        for dataset, group in _pick(frame, budget).groupby("dataset"):
            row = table.setdefault(dataset, {"half": split_of(dataset)})
            row[f"{name}: mean of the starts"] = group["ari"].mean()
            row[f"{name}: chosen by silhouette"] = chosen_by_silhouette(group)
    out = pd.DataFrame.from_dict(table, orient="index").sort_values("half", ascending=False)
    for half in ("tuning", "confirmation"):
        part = out[out["half"] == half]
        if not part.empty:
            out.loc[f"**mean, {half} half ({len(part)})**"] = {"half": half, **part.drop(columns="half").mean()}
    numbers = out.drop(columns="half").map(lambda v: f"{v:.3f}")
    out = pd.concat([out[["half"]], numbers], axis=1)
    out.index.name = "dataset"
    return ("## Several pretraining starts, one kept by the silhouette\n\n"
            f"The {len(seeds)} seeds' pretrained networks of each dataset read as {len(seeds)} starts of one run "
            "(`--pretrain-starts`): K-means at K on each start's latent, and the start whose partition has the "
            "highest silhouette (no labels) is kept. `mean of the starts` is what one start gives on average; "
            "`chosen by silhouette` is one value per dataset (one set of starts), so it carries no ± here.\n\n"
            + markdown_table(out))


def _key(record: dict[str, Any]) -> tuple:
    return record["dataset"], record["seed"], record["step"]


def main() -> None:
    parser = page_parser(__doc__, "pretrain_steps", resume=False)
    parser.add_argument("--half", choices=["tuning", "confirmation", "all"], default="all")
    parser.add_argument("--checks", type=int, nargs="*", default=[60, 125, 250, 500, 1000, 2000, 4000])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    if args.merge is not None:
        records = merge_records(args.out, args.merge, _key)
        finish(args.out, "Pretraining length", summarise(records), merged_from=args.merge)
        return
    names = args.datasets or (None if args.half == "all" else split_datasets(args.half))
    records = read_records(args.out) if args.out.exists() else []
    done = {(r["dataset"], r["seed"]) for r in records}
    for path in datasets(args.data, names):
        adata, truth, k, kind = load(path)
        for seed in args.seeds:
            if (path.stem, seed) in done:
                continue
            for record in dataset_records(adata, truth, k, kind, seed, args.checks):
                records.append({"dataset": path.stem, "seed": seed, **record})
            write_json(args.out, records)
            print(f"{path.stem} seed {seed}: done", flush=True)
    finish(args.out, "Pretraining length", summarise(records))


if __name__ == "__main__":
    main()
