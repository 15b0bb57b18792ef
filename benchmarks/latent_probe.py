"""Does a model change keep more of the panel's signal in the latent? K-means at K after stage 1 (issues 13, 14).

The diagnosis page found the loss in the convolutional encoder's compression to the latent
(stage 2 changes the ARI by ~0). This page measures candidate changes there, cheaply: for every
dataset, seed and variant of :data:`VARIANTS`, the model is fitted with stage 2 switched off
(``cluster_epochs=0``), so its labels are the K-means at K (20 restarts, the seed as random
state) of the pretrained latent, the partition stage 2 would start from. The defaults run in the
same process and the same run, so every row compares like with like. True labels only score.
Stage-1 schedules (fewer steps at a larger learning rate, issue 14) are screened the same way.

Datasets are grouped by the halves of ``benchmarks/split.json``: a variant counts as a gain only
if it is ahead on both halves.

    python benchmarks/latent_probe.py --datasets goolam --seeds 0
    python benchmarks/latent_probe.py --half tuning --out /tmp/probe_tuning.json
    python benchmarks/latent_probe.py --merge /tmp/probe_tuning.json /tmp/probe_conf.json
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import silhouette_score

from common import (datasets, finish, load, markdown_table, mean_sd, merge_or_resume, page_parser, score, seed_coverage,
                    split_datasets, split_of, training_threads, write_json)
from sccsa_train import SCCSA

# name → SCCSA parameters that differ from the defaults
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "latent_32": {"latent_dim": 32},
    "input_noise_1": {"input_noise": 1.0},
    "pretrain_20ep_lr3e-3": {"pretrain_epochs": 20, "lr": 3e-3},
    "pretrain_30ep_lr2e-3": {"pretrain_epochs": 30, "lr": 2e-3},
    "pretrain_500steps_lr2e-3": {"pretrain_max_steps": 500, "lr": 2e-3},
}


def _key(record: dict[str, Any]) -> tuple:
    return record["dataset"], record["seed"], record["variant"]


def probe(adata, truth: np.ndarray, k: int, kind: str, seed: int, variant: str) -> dict[str, Any]:
    """Fit with stage 2 off; score the K-means partition of the pretrained latent."""
    started = time.perf_counter()
    model = SCCSA(k, input_kind=kind, random_state=seed, progress=False, cluster_epochs=0,
                  **VARIANTS[variant]).fit(adata)
    state = model.fitted().state
    latent = state.latent.astype(np.float64)
    return {**score(truth[model._fit_rows], state.labels),
            "silhouette": round(float(silhouette_score(latent, state.labels)), 4),
            "seconds": round(time.perf_counter() - started, 1), "torch_threads": training_threads()}


def _half_mean(means: pd.DataFrame, names: list[str], variant: str) -> str:
    """A variant's mean ARI over one half's datasets that it and the defaults both ran on, the
    defaults' mean on the same datasets beside it (variants need not cover the same datasets)."""
    if variant == "defaults" or "defaults" not in means:  # a shard without the defaults: the variant alone
        values = means.loc[names, variant].dropna()
        return f"**{values.mean():.3f}** ({len(values)} datasets)" if len(values) else "–"
    both = means.loc[names, ["defaults", variant]].dropna()
    if both.empty:
        return "–"
    ahead = int((both[variant] > both["defaults"]).sum())
    return (f"**{both[variant].mean():.3f}** (defaults {both['defaults'].mean():.3f} on the same {len(both)}; "
            f"ahead on {ahead})")


def summarise(records: list[dict[str, Any]]) -> str:
    frame = pd.DataFrame(records)
    variants = [v for v in VARIANTS if v in set(frame["variant"])]
    ari = frame.pivot_table(index="dataset", columns="variant", values="ari", aggfunc=list)
    table = pd.DataFrame({v: ari[v].map(lambda xs: mean_sd(pd.Series(xs)) if isinstance(xs, list) else "–")
                          for v in variants}, index=ari.index)
    table.insert(0, "half", [split_of(d) for d in table.index])
    table = table.sort_values(["half", "dataset"], ascending=[False, True])
    means = frame.groupby(["variant", "dataset"])["ari"].mean().unstack("variant")
    rows = []
    for half in ("tuning", "confirmation"):
        names = [d for d in split_datasets(half) if d in means.index]
        row = {"dataset": f"**mean, {half} half**", "half": half}
        row.update({v: _half_mean(means, names, v) for v in variants})
        rows.append(row)
    body = pd.concat([table, pd.DataFrame(rows).set_index("dataset")])
    settings = "; ".join(f"`{v}`: " + (", ".join(f"{p}={x}" for p, x in ps.items()) or "the defaults")
                         for v, ps in VARIANTS.items() if v in variants)
    return ("Protocol U, K = number of true labels. ARI of sccsa's K-means partition of the pretrained latent "
            "(stage 2 off), mean ± sd over seeds; a value without ± comes from one seed. Variants: "
            f"{settings}. Each variant's mean is over the datasets it and the defaults both ran on, the defaults' "
            "mean on the same datasets beside it; 'ahead on' counts the datasets where a variant's mean over seeds "
            "beats the defaults'.\n\n"
            f"{seed_coverage(frame, 'variant', variants)}\n\n## ARI of K-means on the pretrained latent\n\n"
            f"{markdown_table(body)}")


def main() -> None:
    parser = page_parser(__doc__, "latent_probe")
    parser.add_argument("--half", choices=["tuning", "confirmation"], help="only the datasets of this half")
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    title = "Pretrained latent: candidate model changes"
    records = merge_or_resume(args, title, summarise, _key)
    if records is None:
        return
    done = {_key(r) for r in records}
    names = args.datasets or (split_datasets(args.half) if args.half else None)
    for path in datasets(args.data, names):
        adata, truth, k, kind = load(path)
        for seed in args.seeds:
            for variant in args.variants:
                if (path.stem, seed, variant) in done:
                    continue
                record = {"dataset": path.stem, "split": split_of(path.stem), "seed": seed, "variant": variant,
                          **probe(adata, truth, k, kind, seed, variant)}
                records.append(record)
                print(record, flush=True)
                write_json(args.out, records)
    finish(args.out, title, summarise(records))


if __name__ == "__main__":
    main()
