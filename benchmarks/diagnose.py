"""Where is the signal lost? K-means at K on each stage's representation (issue 13).

For every dataset and seed the default model (F-test on consensus pseudo-labels, 1000 genes,
correlation gene order, learned SA-CC) is trained once, protocol U, and K-means (K = number of
true labels, 20 inits, the seed as random state) is run on each representation it passes through:

- ``pseudo_labels``: the consensus pseudo-labels themselves (what the F-test is fitted on; no K-means);
- ``scanpy_pca``: Scanpy's standard embedding, 50 PCs (the clustering page's kmeans_pca baseline);
- ``panel_pca``: 50 PCs of the standardised selected panel;
- ``panel``: the standardised selected panel (the network's input);
- ``sacc_pretrained`` / ``latent_pretrained``: SA-CC output and latent after stage 1 (pretraining);
- ``sacc_final`` / ``latent_final``: the same after stage 2;
- ``final_labels``: the model's own labels (nearest centroid, no K-means: what sccsa U reports).

Panel variants (no training; the same pseudo-labels): ``panel_pca`` and ``panel`` for the F-test
and for Scanpy's highly variable genes, each at 1000 and 2000 genes.

Results: ``results/diagnose.json`` (one record per dataset × seed × genes × stage) and
``results/diagnose.md``; datasets are grouped by the halves of ``benchmarks/split.json``.

    python benchmarks/diagnose.py
    python benchmarks/diagnose.py --datasets klein_subset_tmscc --seeds 0
    python benchmarks/diagnose.py --merge shard1.json shard2.json   # runs split over processes with --out
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from common import (Timer, datasets, finish, load, markdown_table, mean_sd, merge_records, page_parser, read_records,
                    score, seed_coverage, split_of, training_threads, write_json)
from sccsa_train import SCCSA
from sccsa_train import fit as fit_module
from sccsa_train.genes import build_panel, fit_selector
from sccsa_train.model import SCCSANet
from sccsa_train.preprocess import prepare
from sccsa_train.pseudolabels import standard_pcs

STAGES = ["pseudo_labels", "scanpy_pca", "panel_pca", "panel", "sacc_pretrained", "latent_pretrained",
          "sacc_final", "latent_final", "final_labels"]
DEFAULT_GENES = "ftest-1000"
PANEL_VARIANTS = [("ftest", 1000), ("ftest", 2000), ("hvg", 1000), ("hvg", 2000)]
N_PCS = 50


def kmeans(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    return KMeans(k, n_init=20, random_state=seed).fit_predict(np.asarray(values, dtype=np.float64))


def pcs(values: np.ndarray, seed: int) -> np.ndarray:
    n = max(2, min(N_PCS, values.shape[0] - 1, values.shape[1] - 1))
    return PCA(n, random_state=seed).fit_transform(values)


@torch.no_grad()
def sacc_and_latent(net: SCCSANet, x: torch.Tensor, batch_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """SA-CC output x' and latent z of every row of ``x`` (evaluation mode)."""
    was_training = net.training
    net.eval()
    mixed, latent = [], []
    for start in range(0, x.shape[0], batch_size):
        m, _ = net.sacc(x[start : start + batch_size])
        mixed.append(m.cpu())
        latent.append(net.cae.encode(m).cpu())
    net.train(was_training)
    return torch.cat(mixed).numpy(), torch.cat(latent).numpy()


def trained_stages(adata, kind: str, k: int, seed: int) -> tuple[SCCSA, dict[str, Any], float]:
    """Fit the default model, capturing its input and stage-1 representations on the way."""
    captured: dict[str, Any] = {}
    original = fit_module.initialise_centroids

    def capture(net, x, *args, **kwargs):  # called right after pretraining
        captured["x"] = x.dense()
        captured["sacc_pretrained"], captured["latent_pretrained"] = sacc_and_latent(net, captured["x"])
        return original(net, x, *args, **kwargs)

    fit_module.initialise_centroids = capture
    try:
        with Timer() as timer:
            model = SCCSA(k, input_kind=kind, random_state=seed, progress=False).fit(adata)
    finally:
        fit_module.initialise_centroids = original
    captured["sacc_final"], captured["latent_final"] = sacc_and_latent(model.net_, captured["x"].cpu())
    return model, captured, timer.seconds


def dataset_records(adata, truth: np.ndarray, k: int, kind: str, seed: int) -> list[dict[str, Any]]:
    model, captured, seconds = trained_stages(adata, kind, k, seed)
    fitted = model.labels_ >= 0
    truth = truth[fitted]
    x = captured["x"].cpu().numpy()
    rows: list[tuple[str, str, np.ndarray]] = [
        (DEFAULT_GENES, "pseudo_labels", model.state_.pseudo_labels),
        (DEFAULT_GENES, "final_labels", model.labels_[fitted]),
    ]
    for stage in ("sacc_pretrained", "latent_pretrained", "sacc_final", "latent_final"):
        rows.append((DEFAULT_GENES, stage, kmeans(captured[stage], k, seed)))

    data = prepare(adata, input_kind=kind)
    lognorm = data.lognorm[np.flatnonzero(~data.empty_cells)]
    rows.append((DEFAULT_GENES, "scanpy_pca", kmeans(standard_pcs(lognorm, seed=seed), k, seed)))
    for method, n_genes in PANEL_VARIANTS:
        name = f"{method}-{n_genes}"
        if name == DEFAULT_GENES:
            panel_x = x
        else:
            selector = fit_selector(lognorm, data.genes, n_genes, method, model.state_.pseudo_labels)
            panel, values = build_panel(lognorm, data.genes, selector, "input")
            panel_x = panel.standardise(values)
        rows.append((name, "panel", kmeans(panel_x, k, seed)))
        rows.append((name, "panel_pca", kmeans(pcs(panel_x, seed), k, seed)))
    extra = {"train_seconds": round(seconds, 2), "torch_threads": training_threads(),
             "alpha_mean": round(float(model.alpha_.mean()), 4)}
    return [{"genes": genes, "stage": stage, **score(truth, predicted), **extra} for genes, stage, predicted in rows]


def _stage_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    default = frame[frame["genes"] == DEFAULT_GENES]
    stages = [s for s in STAGES if s in set(default["stage"])]
    table = default.pivot_table(index="dataset", columns="stage", values=metric, aggfunc=mean_sd)[stages].fillna("–")
    table.insert(0, "half", [split_of(d) for d in table.index])
    table = table.sort_values(["half", "dataset"], ascending=[False, True])
    means = default.groupby(["dataset", "stage"])[metric].mean().unstack(1)[stages]
    for half in ("tuning", "confirmation"):
        rows = means[[split_of(d) == half for d in means.index]]
        if len(rows):
            table.loc[f"**mean, {half} half ({len(rows)})**"] = [half, *[f"**{rows[s].mean():.3f}**" for s in stages]]
    table.loc[f"**mean, all {len(means)}**"] = ["", *[f"**{means[s].mean():.3f}**" for s in stages]]
    return table


def _panel_table(frame: pd.DataFrame) -> pd.DataFrame:
    panels = frame[frame["stage"].isin(["panel", "panel_pca"])].copy()
    panels["column"] = panels["genes"] + " " + panels["stage"]
    order = [f"{m}-{n} {s}" for s in ("panel_pca", "panel") for m, n in PANEL_VARIANTS]
    order = [c for c in order if c in set(panels["column"])]
    table = panels.pivot_table(index="dataset", columns="column", values="ari", aggfunc=mean_sd)[order].fillna("–")
    means = panels.groupby(["dataset", "column"])["ari"].mean().unstack(1)[order]
    table.loc[f"**mean, all {len(means)}**"] = [f"**{means[c].mean():.3f}**" for c in order]
    return table


def _losses(frame: pd.DataFrame) -> str:
    """Mean ARI change from each stage to the next (default panel), the largest loss first."""
    default = frame[frame["genes"] == DEFAULT_GENES]
    means = default.groupby(["dataset", "stage"])["ari"].mean().unstack(1)
    chain = [s for s in ("panel", "sacc_pretrained", "latent_pretrained", "latent_final", "final_labels") if s in means]
    steps = [(f"{a} → {b}", float((means[b] - means[a]).mean())) for a, b in zip(chain, chain[1:])]
    if not steps:
        return ""
    steps.sort(key=lambda item: item[1])
    return "Mean ARI change along the network (default panel): " + "; ".join(f"{name} {change:+.3f}"
                                                                           for name, change in steps) + "."


def summarise(records: list[dict[str, Any]]) -> str:
    frame = pd.DataFrame(records)
    seeds = sorted(frame["seed"].unique())
    intro = (f"Protocol U, K = number of true labels, {frame['dataset'].nunique()} datasets, seeds "
             f"{', '.join(map(str, seeds))}. K-means (20 inits) at K on each stage's representation of the "
             "default model (F-test on consensus pseudo-labels, 1000 genes, learned SA-CC); `pseudo_labels` and "
             "`final_labels` are scored as they are. Datasets are grouped by the halves of benchmarks/split.json. "
             + seed_coverage(frame[frame["genes"] == DEFAULT_GENES].assign(what="default"), "what", ["default"]))
    parts = [intro, _losses(frame)]
    for metric in ("ari", "nmi"):
        parts.append(f"## {metric.upper()} per stage (mean ± sd over seeds)\n\n{markdown_table(_stage_table(frame, metric))}")
    parts.append("## Gene panels: F-test vs highly variable genes, 1000 vs 2000 genes (ARI, mean ± sd over seeds)\n\n"
                 "The same pseudo-labels for every panel; `panel_pca` = K-means on 50 PCs of the standardised panel, "
                 "`panel` = K-means on the standardised panel. On the `*_top2000` files 2000 genes is every gene.\n\n"
                 + markdown_table(_panel_table(frame)))
    return "\n\n".join(p for p in parts if p)


def _key(record: dict[str, Any]) -> tuple:
    return record["dataset"], record["seed"], record["genes"], record["stage"]


def main() -> None:
    parser = page_parser(__doc__, "diagnose")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    if args.merge is not None:
        finish(args.out, "Where the signal is lost", summarise(merge_records(args.out, args.merge, _key)), merged_from=args.merge)
        return
    records = read_records(args.out) if args.resume else []
    done = {(r["dataset"], r["seed"]) for r in records}
    for path in datasets(args.data, args.datasets):
        adata, truth, k, kind = load(path)
        for seed in args.seeds:
            if (path.stem, seed) in done:
                continue
            for record in dataset_records(adata, truth, k, kind, seed):
                records.append({"dataset": path.stem, "split": split_of(path.stem), "seed": seed, **record})
            print({k_: v for k_, v in records[-1].items()}, flush=True)
            write_json(args.out, records)
    finish(args.out, "Where the signal is lost", summarise(records))


if __name__ == "__main__":
    main()
