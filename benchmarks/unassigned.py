"""What ``unassigned`` costs and catches: query cells of known types left unassigned, and cells of a
type the reference never saw that are flagged (issue 13, protocol T).

For every dataset and seed: protocol T's split (the same stratified 70 % / 30 % as
``clustering.py``), then the reference's most common cell type is taken out of the reference (the
"unseen" type), a reference-mode model (``labels_key``, the defaults) is fitted on the rest,
exported, and the whole query, the unseen type included, is labelled by the serving half. Reported
for the thresholds in the bundle (conformal, ``sccsa_train.thresholds``) and, from the same fit, for
the rule before them (each cluster's 99.5th percentile of its training cells' distances, read off
the reference cells through the same bundle):

- ``known_unassigned``: fraction of query cells of the reference's types left unassigned (the
  promise is 0.5 %); ``known_accuracy``: their label accuracy (unassigned counts as wrong);
- ``unseen_unassigned``: fraction of the unseen type's query cells flagged (higher is better);
- ``unseen_auroc``: how well the distance to the nearest centroid alone ranks unseen above known
  query cells (no threshold; 0.5 = no signal).

True labels choose the held-out type and score; they never steer training.

    python benchmarks/unassigned.py                      # seeds 0-2 under 2,000 cells, seed 0 above
    python benchmarks/unassigned.py --datasets goolam --seeds 0
    python benchmarks/unassigned.py --datasets cbmc_citeseq_top2000 worm_neuron --out /tmp/unassigned_a.json
    python benchmarks/unassigned.py --merge /tmp/unassigned_a.json /tmp/unassigned_b.json
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from clustering import transfer_split
from common import (datasets, finish, load, markdown_table, mean_sd, merge_or_resume, page_parser, split_of,
                    training_threads, write_json)
from sccsa_infer import Predictor
from sccsa_train import SCCSA

TITLE = "Unassigned cells: known types kept, unseen types flagged"
LABEL_KEY = "cell_type"
SMALL = 2000
RULES = {"conformal": "conformal thresholds (the bundle's)", "percentile": "99.5th percentile (the rule before)"}


def default_seeds(n_cells: int) -> list[int]:
    """Three seeds for a dataset under :data:`SMALL` cells, one for a larger one."""
    return [0, 1, 2] if n_cells < SMALL else [0]


def _key(record: dict[str, Any]) -> tuple:
    return record["dataset"], record["seed"]


def percentile_thresholds(distance: np.ndarray, cluster: np.ndarray, k: int) -> np.ndarray:
    """The rule before the conformal thresholds: each cluster's 99.5th percentile of its training
    cells' distances (all cells' percentile for a cluster without any)."""
    return np.array([np.quantile(distance[cluster == c] if np.any(cluster == c) else distance, 0.995)
                     for c in range(k)])


def rule_scores(unassigned: np.ndarray, named: np.ndarray, truth: np.ndarray, unseen: np.ndarray) -> dict[str, float]:
    """Known cells' unassigned fraction and label accuracy, the unseen type's flagged fraction."""
    known = ~unseen
    return {"known_unassigned": round(float(unassigned[known].mean()), 4),
            "known_accuracy": round(float(np.mean(~unassigned[known] & (named[known] == truth[known]))), 4),
            "unseen_unassigned": round(float(unassigned[unseen].mean()), 4)}


def measure(adata, labels: np.ndarray, kind: str, seed: int) -> dict[str, Any]:
    """Fit without the reference's most common type; label the query under both rules."""
    started = time.perf_counter()
    ref_idx, query_idx = transfer_split(labels, seed)
    types, counts = np.unique(labels[ref_idx], return_counts=True)
    held_out = types[np.argmax(counts)]
    ref_idx = ref_idx[labels[ref_idx] != held_out]
    truth, unseen = labels[query_idx], labels[query_idx] == held_out
    if unseen.all() or not unseen.any():  # an unstratified split can leave the query without one side
        raise SystemExit(f"The query of seed {seed} holds {'only' if unseen.all() else 'no'} cells of the held-out "
                         f"type {held_out!r}; this page needs both. Use another seed or dataset.")
    reference = adata[ref_idx].copy()
    reference.obs[LABEL_KEY] = pd.Categorical(labels[ref_idx])
    model = SCCSA(labels_key=LABEL_KEY, input_kind=kind, random_state=seed, progress=False).fit(reference)
    with tempfile.TemporaryDirectory() as folder:
        model.export(Path(folder) / "bundle")
        predictor = Predictor(Path(folder) / "bundle")
        query, trained = predictor.predict(adata[query_idx].copy()), predictor.predict(reference)
    names = np.asarray(predictor.bundle.cluster_names, dtype=object)
    old = percentile_thresholds(trained.distance, trained.cluster, len(names))
    flagged = {"conformal": query.unassigned, "percentile": (query.distance > old[query.cluster]) | query.empty}
    record: dict[str, Any] = {"held_out": str(held_out), "n_reference": len(ref_idx), "n_unseen": int(unseen.sum()),
                              "n_known": int((~unseen).sum()),
                              "unseen_auroc": round(float(roc_auc_score(unseen, query.distance)), 4)}
    for rule, unassigned in flagged.items():
        record.update({f"{rule}:{name}": value
                       for name, value in rule_scores(unassigned, names[query.cluster], truth, unseen).items()})
    return {**record, "seconds": round(time.perf_counter() - started, 1), "torch_threads": training_threads()}


def summarise(records: list[dict[str, Any]]) -> str:
    frame = pd.DataFrame(records)
    metrics = ("known_unassigned", "known_accuracy", "unseen_unassigned")
    columns = {f"{metric} ({rule})": frame.groupby("dataset")[f"{rule}:{metric}"].agg(mean_sd)
               for metric in metrics for rule in RULES}
    table = pd.DataFrame(columns)
    table.insert(0, "unseen AUROC", frame.groupby("dataset")["unseen_auroc"].agg(mean_sd))
    first = frame.groupby("dataset")[["held_out", "n_unseen", "n_reference"]].first()
    table.insert(0, "held-out type (query cells)", first["held_out"] + " (" + first["n_unseen"].astype(str) + ")")
    table.insert(0, "reference cells", first["n_reference"])
    table.insert(0, "half", [split_of(d) for d in table.index])
    table = table.sort_values(["half", "dataset"], ascending=[False, True])
    means = frame.groupby("dataset")[[f"{rule}:{m}" for m in metrics for rule in RULES] + ["unseen_auroc"]].mean()
    row = {"half": "", "reference cells": "", "held-out type (query cells)": "",
           "unseen AUROC": f"**{means['unseen_auroc'].mean():.3f}**"}
    row.update({f"{m} ({rule})": f"**{means[f'{rule}:{m}'].mean():.3f}**" for m in metrics for rule in RULES})
    table.loc[f"**mean over {len(means)} datasets**"] = row
    rules = "; ".join(f"`{rule}`: {text}" for rule, text in RULES.items())
    return ("Protocol T's split with the reference's most common type taken out of the reference; the query "
            "keeps it. Both rules from the same fit (defaults, reference mode): " + rules + ". `known_*`: query cells "
            "of the types the reference has (unassigned counts as wrong in the accuracy); `unseen_unassigned`: "
            "the held-out type's query cells flagged; `unseen AUROC`: the distance to the nearest centroid as "
            "a score for 'unseen' (no threshold). Mean ± sd over seeds.\n\n"
            f"{_seeds(frame)}\n\n" + markdown_table(table))


def _seeds(frame: pd.DataFrame) -> str:
    """'Seeds run: 3 on 6 datasets, 1 on 7.'"""
    counts = frame.groupby("dataset")["seed"].nunique().value_counts().sort_index(ascending=False)
    return ("Seeds run: " + ", ".join(f"{n} on {m} dataset(s)" for n, m in counts.items())
            + ". A value without ± comes from one seed.")


def main() -> None:
    parser = page_parser(__doc__, "unassigned", seeds=False)
    parser.add_argument("--seeds", type=int, nargs="*", default=None,
                        help=f"default: 0, 1, 2 on datasets under {SMALL:,} cells, where a fit is cheap and "
                             "a few cells more or less unassigned move the fractions most; 0 on the others")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    records = merge_or_resume(args, TITLE, summarise, _key)
    if records is None:
        return
    done = {_key(r) for r in records}
    for path in datasets(args.data, args.datasets):
        adata, labels, _, kind = load(path)
        for seed in args.seeds if args.seeds is not None else default_seeds(adata.n_obs):
            if (path.stem, seed) in done:
                continue
            record = {"dataset": path.stem, "split": split_of(path.stem), "seed": seed,
                      **measure(adata, labels, kind, seed)}
            records.append(record)
            print(record, flush=True)
            write_json(args.out, records)
    finish(args.out, TITLE, summarise(records))


if __name__ == "__main__":
    main()
