"""Pseudo-label page: how good are the labels the F-test (and ``--init labels``) are fitted on?

For every dataset and seed, the ARI against the true labels of:

* each member of the K-means + Leiden ensemble (min / median / max over the 15 runs);
* the membership consensus (K-means on the one-hot memberships: today's default without a batch
  key);
* the most agreeing member (the ensemble's medoid partition by summed ARI to the others: the
  choice with ``--batch-key``);

and, on the datasets with a donor column, the same after Harmony on the PCs (what ``--batch-key
donor`` uses). No model is trained; true labels only score the partitions.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from common import (
    Timer,
    datasets,
    finish,
    load,
    markdown_table,
    mean_sd,
    merge_or_resume,
    page_parser,
    split_of,
    write_json,
)
from fetch_data import EXTRA_DATA
from sccsa_train.preprocess import prepare
from sccsa_train.pseudolabels import consensus_labels, membership_consensus, most_agreeing

BATCH_KEY = "donor"


def records_for(path: Path, seed: int) -> list[dict]:
    adata, truth, k, kind = load(path)
    lognorm = prepare(adata, input_kind=kind).lognorm
    variants = [("none", None)]
    if BATCH_KEY in adata.obs.columns:
        variants.append(("harmony", adata.obs[BATCH_KEY].astype(str).to_numpy()))
    records = []
    for correction, batches in variants:
        with Timer() as timer:
            result = consensus_labels(lognorm, k, seed=seed, batches=batches)
        members = [adjusted_rand_score(truth, labels) for labels in result.ensemble]
        membership = membership_consensus(result.ensemble, k, seed)
        records.append({
            "dataset": path.stem, "split": split_of(path.stem), "seed": seed, "correction": correction,
            "members_min": round(min(members), 4), "members_median": round(float(np.median(members)), 4),
            "members_max": round(max(members), 4),
            "membership_consensus": round(adjusted_rand_score(truth, membership), 4),
            "most_agreeing": round(adjusted_rand_score(truth, most_agreeing(result.ensemble, k)), 4),
            "seconds": round(timer.seconds, 2),
        })
    return records


def summarise(records: list[dict]) -> str:
    frame = pd.DataFrame(records)
    columns = ["members_min", "members_median", "members_max", "membership_consensus", "most_agreeing"]
    parts = []
    for correction, rows in frame.groupby("correction", sort=False):
        table = rows.groupby(["dataset", "split"])[columns].agg(mean_sd).reset_index("split")
        means = rows.groupby("dataset")[columns].mean()
        for half in ("tuning", "confirmation"):
            names = [d for d in means.index if split_of(d) == half]
            if names:
                table.loc[f"**mean, {half} half ({len(names)})**"] = ["", *(
                    f"**{means.loc[names, c].mean():.3f}**" for c in columns)]
        title = "uncorrected PCs" if correction == "none" else "Harmony-corrected PCs (datasets with a donor column)"
        parts.append(f"## Pseudo-label ARI, {title} (mean ± sd over seeds)\n\n{markdown_table(table.fillna('–'))}")
    intro = (f"{frame['dataset'].nunique()} datasets, seeds {', '.join(map(str, sorted(frame['seed'].unique())))}. "
             "K = number of true labels. Members: the 12 K-means runs (10/20/30/50 PCs) and 3 Leiden runs at the "
             "resolution giving K; `membership_consensus`: K-means on their one-hot memberships (the default "
             "pseudo-labels without a batch key); `most_agreeing`: the member with the largest summed ARI to the "
             "others (the pseudo-labels with `--batch-key`). Nothing is trained; the labels only score.")
    return intro + "\n\n" + "\n\n".join(parts)


def _key(record: dict) -> tuple:
    return record["dataset"], record["seed"], record["correction"]


def main() -> None:
    parser = page_parser(__doc__, "pseudolabels")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    title = "Pseudo-labels: ensemble members, membership consensus, most agreeing member"
    records = merge_or_resume(args, title, summarise, _key)
    if records is None:
        return
    done = {(r["dataset"], r["seed"]) for r in records}
    paths = datasets(args.data, args.datasets)
    extra = EXTRA_DATA / "baron_mouse_pancreas_came.h5ad"
    if extra.exists() and (not args.datasets or extra.stem in args.datasets):
        paths.append(extra)
    for path in paths:
        for seed in args.seeds:
            if (path.stem, seed) in done:
                continue
            for record in records_for(path, seed):
                records = [r for r in records if _key(r) != _key(record)] + [record]
                print(record, flush=True)
            write_json(args.out, records)
    finish(args.out, title, summarise(records))


if __name__ == "__main__":
    main()
