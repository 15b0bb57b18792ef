"""Batch page: clusters of cell types, not of donors (issue 17).

On every dataset with a batch column (``obs['donor']``), 3 seeds, in one run:

* sccsa U without and with ``--batch-key donor``;
* Scanpy's standard embedding (HVGs, scale, 50 PCs) uncorrected, Harmony-corrected (harmonypy on
  the PCs) and ComBat-corrected (``scanpy.pp.combat`` before scaling), each with K-means at K
  and Leiden at the resolution giving K;
* scVI with ``batch_key='donor'`` (scvi-tools' default SCVI, n_latent 10, raw counts, 2000
  seurat_v3 HVGs; ``bench`` extra), K-means and Leiden at K on its latent;
* protocol T by donor: for each donor in turn (datasets with ≥ 3 donors, so training keeps
  several), sccsa ``--batch-key donor`` trained on the other donors, exported, and the held-out
  donor labelled through ``sccsa_infer.Predictor`` (ONNX Runtime); its ARI beside the in-sample
  ARI of the same donor's cells in the all-donor fit of the same seed, and the gap split two
  ways: on the donor's cells of types the other donors hold enough of (:func:`represented_types`),
  and as the held-out fit's own loss on the other donors' cells against the all-donor fit's;
  and whether the encoder places the unseen donor as it places its training donors, both labelled
  by the held-out fit's bundle (:func:`transfer_diagnosis`), since the ARI gap also compares two
  fits' partitions.

Metrics: ARI / NMI / ACC against the cell types; batch mixing as the NMI between clusters and
donor (lower: clusters less tied to donors) and the kNN batch entropy of the embedding the
clusters come from (mean over cells of the donor entropy among their 30 nearest neighbours,
divided by log(number of donors); higher: better mixed). Both mixing scores are also limited by
real composition differences between donors (e.g. Baron human acinar cells come almost all from
one donor), so they are compared between methods, never against 0 or 1.

Datasets: the shared Baron human subset (confirmation half of ``split.json``) and the Baron mouse
set that ``fetch_data.py`` writes to ``benchmarks/data`` (tuning: batch-aware defaults were
chosen on it only).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from sklearn.neighbors import NearestNeighbors

from clustering import scvi_available, scvi_latent
from common import (
    Timer,
    finish,
    load,
    markdown_table,
    mean_sd,
    merge_or_resume,
    page_parser,
    scanpy_embedding,
    score,
    seed_coverage,
    training_threads,
    write_json,
)
from fetch_data import EXTRA_DATA
from sccsa_infer import Predictor
from sccsa_train import SCCSA
from sccsa_train.preprocess import prepare
from sccsa_train.pseudolabels import leiden_resolution_for_k

BATCH_KEY = "donor"
NEIGHBOURS = 30
UNDER_REPRESENTED = 4
"""A held-out donor's type is under-represented when the training donors' share of it is below a
quarter of the donor's own (e.g. Baron human acinar cells: 23 % of donor human3, 2 % of the others)."""
DATASETS = {"baron_mouse_pancreas_came": ("tuning", EXTRA_DATA), "baron_human_pancreas_subset_came": ("confirmation", None)}
METHOD_ORDER = ["sccsa", "sccsa_batch", "kmeans_pca", "leiden_k", "harmony_kmeans", "harmony_leiden_k",
                "combat_kmeans", "combat_leiden_k", "scvi_batch_kmeans", "scvi_batch_leiden_k"]


def batch_entropy(embedding: np.ndarray, batches: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean over cells of the batch entropy among their k nearest neighbours, over log(#batches)."""
    names, codes = np.unique(batches, return_inverse=True)
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(embedding).kneighbors(embedding, return_distance=False)[:, 1:]
    counts = np.stack([np.bincount(row, minlength=len(names)) for row in codes[neighbours]]) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(counts > 0, counts * np.log(counts), 0.0), axis=1)
    return float(entropy.mean() / np.log(len(names)))


def scores(truth: np.ndarray, predicted: np.ndarray, batches: np.ndarray, embedding: np.ndarray) -> dict:
    """Cell-type agreement and batch mixing of one clustering and the embedding it came from."""
    return {**score(truth, predicted),
            "batch_nmi": round(float(normalized_mutual_info_score(batches, predicted)), 4),
            "batch_entropy": round(batch_entropy(embedding, batches), 4)}


def sccsa_record(adata: ad.AnnData, truth: np.ndarray, batches: np.ndarray, k: int, seed: int,
                 batch_key: str | None) -> tuple[dict, SCCSA]:
    with Timer() as timer:
        model = SCCSA(k, batch_key=batch_key, random_state=seed, progress=False).fit(adata)
    record = {"method": "sccsa_batch" if batch_key else "sccsa", **scores(truth, model.labels_, batches, model.state_.latent),
              "seconds": round(timer.seconds, 2), "torch_threads": training_threads()}
    return record, model


def heldout_records(adata: ad.AnnData, truth: np.ndarray, batches: np.ndarray, k: int, seed: int,
                    in_sample: np.ndarray) -> list[dict]:
    """Protocol T by donor: train on the other donors with the batch key, label the held-out one
    through the exported bundle; ``in_sample`` are the all-donor fit's labels of every cell."""
    records = []
    for donor in np.unique(batches):
        query = batches == donor
        with Timer() as timer:
            model = SCCSA(k, batch_key=BATCH_KEY, random_state=seed, progress=False).fit(adata[~query].copy())
            with tempfile.TemporaryDirectory() as folder:
                model.export(Path(folder) / "bundle")
                labelled = Predictor(Path(folder) / "bundle").predict(adata)  # every donor; it never modifies its input
        predicted = labelled.cluster[query]
        shared = represented_types(truth[~query], truth[query])
        records.append({"method": "sccsa_batch", "protocol": f"T:{donor}", **score(truth[query], predicted),
                        "in_sample_ari": score(truth[query], in_sample[query])["ari"], "n_query": int(query.sum()),
                        "represented": round(float(shared.mean()), 4),
                        "heldout_ari_represented": _ari(truth[query][shared], predicted[shared]),
                        "in_sample_ari_represented": _ari(truth[query][shared], in_sample[query][shared]),
                        "others_ari": score(truth[~query], model.labels_)["ari"],
                        "others_in_sample_ari": score(truth[~query], in_sample[~query])["ari"],
                        **transfer_diagnosis(truth, labelled.cluster, labelled.distance, query),
                        "seconds": round(timer.seconds, 2), "torch_threads": training_threads()})
    return records


def transfer_diagnosis(truth: np.ndarray, clusters: np.ndarray, distances: np.ndarray,
                       query: np.ndarray) -> dict[str, float | None]:
    """Does the encoder place a donor it never saw as it places its training donors? Both sides
    labelled by the same bundle: ``in_majority`` is the share of the held-out donor's cells in
    their type's majority cluster among the training donors' cells, ``others_in_majority`` the
    same share for the training donors' cells, and ``distance_ratio`` the median over the
    held-out cells of their distance to their centroid over the median distance of the training
    cells of their type. Cells of types the training donors lack are left out (both None when
    that is every cell of the donor)."""
    frame = pd.DataFrame({"type": truth, "cluster": clusters, "distance": distances})
    training = frame[~query]
    majority = training.groupby("type")["cluster"].agg(lambda s: s.value_counts().index[0])
    typical = training.groupby("type")["distance"].median()
    held = frame[query & np.isin(truth, majority.index)]

    def in_majority(part: pd.DataFrame) -> float:
        return float((part["cluster"].to_numpy() == majority.reindex(part["type"]).to_numpy()).mean())

    found: dict[str, float | None] = {"in_majority": None, "others_in_majority": round(in_majority(training), 4),
                                      "distance_ratio": None}  # None: the donor holds no type the others hold
    if len(held):
        ratio = held["distance"].to_numpy() / typical.reindex(held["type"]).to_numpy()
        found.update(in_majority=round(in_majority(held), 4), distance_ratio=round(float(np.median(ratio)), 4))
    return found


def _ari(truth: np.ndarray, predicted: np.ndarray) -> float:
    return score(truth, predicted)["ari"] if len(truth) else float("nan")


def represented_types(reference: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Which query cells belong to a type the reference holds at least 1/:data:`UNDER_REPRESENTED`
    of the query's share of (fraction of cells). A held-out donor's cells of a type the training
    donors barely hold cannot get a cluster of their own, whatever the method: the held-out gap
    on the other cells is the part the method answers for."""
    reference_share = pd.Series(reference).value_counts(normalize=True)
    query_share = pd.Series(query).value_counts(normalize=True)
    ratio = reference_share.reindex(query_share.index, fill_value=0.0) / query_share
    return np.isin(query, ratio.index[ratio >= 1.0 / UNDER_REPRESENTED])


def _kmeans_and_leiden(embedding: ad.AnnData, basis: str, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    kmeans = KMeans(k, n_init=20, random_state=seed).fit_predict(embedding.obsm[basis])
    sc.pp.neighbors(embedding, use_rep=basis, random_state=seed)
    _, leiden = leiden_resolution_for_k(embedding, k, seed)
    return kmeans, leiden


def baseline_records(adata: ad.AnnData, truth: np.ndarray, batches: np.ndarray, k: int, seed: int) -> list[dict]:
    """Scanpy's embedding uncorrected, with Harmony and with ComBat; K-means and Leiden at K on each."""
    lognorm = prepare(adata).lognorm
    records = []
    for name, corrected in (("", None), ("harmony_", batches)):
        with Timer() as timer:
            embedding = scanpy_embedding(lognorm, seed=seed, batches=corrected)
            kmeans, leiden = _kmeans_and_leiden(embedding, "X_pca", k, seed)
        for method, predicted in ((f"{name}kmeans" if name else "kmeans_pca", kmeans), (f"{name}leiden_k", leiden)):
            records.append({"method": method, **scores(truth, predicted, batches, embedding.obsm["X_pca"]),
                            "seconds": round(timer.seconds, 2)})
    with Timer() as timer:
        combat = ad.AnnData(X=sp.csr_matrix(lognorm, dtype=np.float32))
        combat.obs[BATCH_KEY] = pd.Categorical(batches)
        sc.pp.highly_variable_genes(combat, n_top_genes=2000, subset=True)
        sc.pp.combat(combat, key=BATCH_KEY)
        sc.pp.scale(combat, max_value=10)
        sc.tl.pca(combat, n_comps=50, random_state=seed)
        kmeans, leiden = _kmeans_and_leiden(combat, "X_pca", k, seed)
    for method, predicted in (("combat_kmeans", kmeans), ("combat_leiden_k", leiden)):
        records.append({"method": method, **scores(truth, predicted, batches, combat.obsm["X_pca"]),
                        "seconds": round(timer.seconds, 2)})
    return [dict(r, protocol="-") for r in records]


def scvi_records(adata: ad.AnnData, truth: np.ndarray, batches: np.ndarray, k: int, seed: int) -> list[dict]:
    """scVI with the donor as ``batch_key``, K-means and Leiden at K on its latent."""
    with Timer() as timer:
        cells, latent, epochs = scvi_latent(adata, seed, batch_key=BATCH_KEY)
    embedding = ad.AnnData(X=np.zeros((len(cells), 0), dtype=np.float32), obsm={"X_scvi": latent})
    kmeans, leiden = _kmeans_and_leiden(embedding, "X_scvi", k, seed)
    return [{"method": method, "protocol": "-", **scores(truth[cells], predicted, batches[cells], latent),
             "seconds": round(timer.seconds, 2), "epochs": epochs}
            for method, predicted in (("scvi_batch_kmeans", kmeans), ("scvi_batch_leiden_k", leiden))]


def summarise(records: list[dict]) -> str:
    frame = pd.DataFrame(records)
    clustering = frame[frame["protocol"].isin(["U", "-"])]
    columns = [m for m in METHOD_ORDER if m in set(clustering["method"])]
    parts = []
    titles = {"ari": "Cell-type ARI", "nmi": "Cell-type NMI", "batch_nmi": "Batch NMI of the clusters (lower is better)",
              "batch_entropy": "kNN batch entropy of the embedding (higher is better)", "seconds": "Wall time (s)"}
    for metric, title in titles.items() if not clustering.empty else ():  # a --only heldout shard has none
        table = clustering.pivot_table(index="dataset", columns="method", values=metric, aggfunc=mean_sd)[columns]
        table.insert(0, "split", [DATASETS.get(d, ("?",))[0] for d in table.index])
        parts.append(f"## {title} (mean ± sd over seeds)\n\n{markdown_table(table.fillna('–'))}")
    heldout = frame[frame["protocol"].str.startswith("T:")]
    if not heldout.empty:
        heldout = heldout.assign(donor=heldout["protocol"].str[2:], gap=heldout["in_sample_ari"] - heldout["ari"],
                                 gap_represented=heldout["in_sample_ari_represented"] - heldout["heldout_ari_represented"],
                                 others_gap=heldout["others_in_sample_ari"] - heldout["others_ari"])
        rows = heldout.groupby(["dataset", "donor"]).agg(
            n_query=("n_query", lambda s: int(s.iloc[0])), heldout_ari=("ari", mean_sd), in_sample_ari=("in_sample_ari", mean_sd),
            gap=("gap", mean_sd), represented=("represented", lambda s: f"{s.iloc[0]:.0%}"),
            gap_represented=("gap_represented", mean_sd),
            others_ari=("others_ari", mean_sd), others_in_sample_ari=("others_in_sample_ari", mean_sd),
            others_gap=("others_gap", mean_sd),
            **{name: (name, mean_sd) for name in DIAGNOSIS if name in heldout})
        parts.append("## Protocol T by donor: a donor training never saw, labelled through the exported bundle\n\n"
                     "`heldout_ari`: sccsa `--batch-key donor` trained on the other donors, the held-out donor "
                     "labelled by `sccsa_infer.Predictor`; `in_sample_ari`: the same donor's cells in the all-donor "
                     "`--batch-key donor` fit of the same seed; `gap` = in-sample − held-out. The gap splits by "
                     "the reference's composition: `represented` is the share of the donor's cells whose type the "
                     f"other donors hold at least 1/{UNDER_REPRESENTED} of the donor's own share of (a type the "
                     "training donors barely hold cannot get a cluster of its own, whatever the method), and "
                     "`gap_represented` is the gap on those cells only. And it splits by where it arises: "
                     "`others_ari` scores the held-out fit on its own training cells (the other donors), "
                     "`others_in_sample_ari` the all-donor fit on the same cells, `others_gap` their difference: "
                     "what leaving the donor out costs the fit itself, before any cell of the donor is labelled. "
                     "Whether the encoder transfers, with both sides labelled by the held-out fit's bundle (cells "
                     "of types its training donors lack left out): `in_majority`, the share of the donor's cells "
                     "in their type's majority cluster among the training donors' cells, beside "
                     "`others_in_majority`, that share for the training donors' own cells; `distance_ratio`, the "
                     "median over the donor's cells of their distance to their centroid over the median distance "
                     "of the training cells of their type (1: placed as close as the cells it was trained on)."
                     "\n\n" + markdown_table(rows))
    intro = (f"{frame['dataset'].nunique()} dataset(s) with a donor column, seeds "
             f"{', '.join(map(str, sorted(frame['seed'].unique())))}; K = number of true labels for every method. "
             "Batch-aware defaults were chosen on the tuning set only. "
             + (seed_coverage(clustering, "method", columns) if columns else ""))
    return intro + "\n\n" + "\n\n".join(parts)


DIAGNOSIS = ("in_majority", "others_in_majority", "distance_ratio")  # transfer_diagnosis' fields


def _key(record: dict) -> tuple:
    return record["dataset"], record["method"], record["protocol"], record["seed"]


def main() -> None:
    parser = page_parser(__doc__, "batch", default_datasets=list(DATASETS), dataset_choices=list(DATASETS))
    parser.add_argument("--only", nargs="*", choices=["sccsa", "heldout", "baselines", "scvi"],
                        default=["sccsa", "heldout", "baselines", "scvi"], help="parts to run")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    title = "Batch-aware clustering (donors)"
    records = merge_or_resume(args, title, summarise, _key)
    if records is None:
        return
    done = {_key(r) for r in records}
    parts = [p for p in args.only if p != "scvi" or scvi_available()]

    def add(new: list[dict], dataset: str, seed: int) -> None:
        nonlocal records
        for record in new:
            record = {"dataset": dataset, "seed": seed, **record}
            records = [r for r in records if _key(r) != _key(record)]
            records.append(record)
            print(record, flush=True)
        write_json(args.out, records)

    for name in args.datasets:
        folder = DATASETS[name][1] or args.data
        if not (folder / f"{name}.h5ad").exists():
            raise SystemExit(f"{folder / name}.h5ad is missing" + (" (run benchmarks/fetch_data.py)" if DATASETS[name][1] else ""))
        adata, truth, k, _ = load(folder / f"{name}.h5ad")
        batches = adata.obs[BATCH_KEY].astype(str).to_numpy()
        heldout = "heldout" in parts and len(np.unique(batches)) >= 3
        for seed in args.seeds:
            in_sample = None
            for batch_key in (None, BATCH_KEY):
                method = "sccsa_batch" if batch_key else "sccsa"
                record_it = "sccsa" in parts and (name, method, "U", seed) not in done
                if record_it or (heldout and batch_key):
                    record, model = sccsa_record(adata, truth, batches, k, seed, batch_key)
                    if record_it:
                        add([dict(record, protocol="U")], name, seed)
                    in_sample = model.labels_
            if heldout:
                add(heldout_records(adata, truth, batches, k, seed, in_sample), name, seed)
            if "baselines" in parts and (name, "kmeans_pca", "-", seed) not in done:
                add(baseline_records(adata, truth, batches, k, seed), name, seed)
            if "scvi" in parts and (name, "scvi_batch_kmeans", "-", seed) not in done:
                add(scvi_records(adata, truth, batches, k, seed), name, seed)
    finish(args.out, title, summarise(records))


if __name__ == "__main__":
    main()
