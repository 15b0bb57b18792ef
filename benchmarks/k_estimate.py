"""How well ``--n-clusters auto`` estimates K: the estimate on every dataset vs its number of labels.

    python benchmarks/k_estimate.py
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pandas as pd

from common import DEFAULT_DATA, RESULTS, Timer, datasets, finish, load, markdown_table, write_json
from sccsa_train import n_clusters
from sccsa_train.preprocess import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "k_estimate.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    records = []
    for path in datasets(args.data):
        adata, _, k, kind = load(path)
        lognorm = prepare(adata, input_kind=kind).lognorm
        for seed in args.seeds:
            with Timer() as timer:
                estimate = n_clusters.estimate(lognorm, seed=seed)
            records.append({"dataset": path.stem, "seed": seed, "true_k": k, "estimated_k": estimate,
                            "seconds": round(timer.seconds, 2)})
            print(records[-1], flush=True)
    write_json(args.out, records)
    frame = pd.DataFrame(records)
    table = frame.groupby("dataset").agg(true_k=("true_k", "first"),
                                         estimated_k=("estimated_k", lambda s: "/".join(map(str, s))))
    error = (frame.groupby("dataset")["estimated_k"].median() - frame.groupby("dataset")["true_k"].first()).abs()
    body = (f"`--n-clusters auto` ({n_clusters.METHOD}); estimates for seeds {', '.join(map(str, args.seeds))}. "
            f"Median absolute error {error.median():.1f} clusters; exact on {int((error == 0).sum())} of {len(error)} "
            f"datasets. Give K when you know it.\n\n" + markdown_table(table))
    finish(args.out, "Estimating K", body)


if __name__ == "__main__":
    main()
