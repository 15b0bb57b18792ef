"""Ablations of sccsa's design choices (protocol U, K = number of true labels, 3 seeds).

Variants, each against the default (F-test genes, SA-CC, correlation gene order):

- gene selection: ``--genes hvg`` (Scanpy highly variable genes) instead of the F-test;
- coefficient compression: fixed α ∈ {0, 0.25, 0.5, 0.75, 1} (the paper's "fixed CC";
  α = 1 is expression only, α = 0 autocorrelation only) and ``--cc off``;
- gene order: ``fscore`` and ``input`` instead of ``correlation``;
- centroid initialisation: ``init='labels'`` (latent means of the consensus pseudo-labels)
  instead of K-means on the latent.

Results: ``results/ablations.json`` and ``results/ablations.md``.

    python benchmarks/ablations.py
    python benchmarks/ablations.py --datasets pbmc_zheng4k_top2000 --seeds 0 --variants default hvg
    python benchmarks/ablations.py --merge shard1.json shard2.json   # runs split over processes with --out
"""

from __future__ import annotations

import warnings

import pandas as pd

from common import (Timer, datasets, finish, load, markdown_table, mean_sd, merge_records, page_parser, read_records,
                    score, seed_coverage, training_threads, write_json)
from sccsa_train import SCCSA

DEFAULT_DATASETS = ["pbmc_zheng4k_top2000", "klein_subset_tmscc", "zeisel_subset_descend"]
VARIANTS: dict[str, dict] = {
    "default": {},
    "hvg": {"genes": "hvg"},
    "fixed α=0": {"cc": "fixed", "alpha": 0.0},
    "fixed α=0.25": {"cc": "fixed", "alpha": 0.25},
    "fixed α=0.5": {"cc": "fixed", "alpha": 0.5},
    "fixed α=0.75": {"cc": "fixed", "alpha": 0.75},
    "fixed α=1": {"cc": "fixed", "alpha": 1.0},
    "cc off": {"cc": "off"},
    "order fscore": {"gene_order": "fscore"},
    "order input": {"gene_order": "input"},
    "init labels": {"init": "labels"},
}
GROUPS = {"default": "—", "hvg": "gene selection", "cc off": "coefficient compression",
          "order fscore": "gene order", "order input": "gene order", "init labels": "centroid initialisation"}


def summarise(records: list[dict]) -> str:
    frame = pd.DataFrame(records)
    order = [v for v in VARIANTS if v in set(frame["variant"])]
    parts = []
    for metric in ("ari", "nmi", "acc"):
        table = frame.pivot_table(index="variant", columns="dataset", values=metric, aggfunc=mean_sd).reindex(order)
        table["mean over datasets"] = frame.groupby(["variant", "dataset"])[metric].mean().unstack(1).mean(axis=1).reindex(order).map("{:.3f}".format)
        table.insert(0, "ablates", [GROUPS.get(v, "coefficient compression") for v in order])
        parts.append(f"## {metric.upper()} (mean ± sd over seeds)\n\n{markdown_table(table)}")
    alpha = frame[frame["variant"] == "default"].groupby("dataset")[["alpha_mean", "alpha_sd"]].mean().round(3)
    parts.append("## Learned SA-CC α (default variant): mean and sd over cells, averaged over seeds\n\n" + markdown_table(alpha))
    return (f"Protocol U on {frame['dataset'].nunique()} datasets, seeds {', '.join(map(str, sorted(frame['seed'].unique())))}; "
            "each row changes one option of the default. " + seed_coverage(frame, "variant", order) + "\n\n"
            + "\n\n".join(parts))


def _key(record: dict) -> tuple:
    return record["dataset"], record["variant"], record["seed"]


def main() -> None:
    parser = page_parser(__doc__, "ablations", default_datasets=DEFAULT_DATASETS)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    if args.merge is not None:
        finish(args.out, "Ablations", summarise(merge_records(args.out, args.merge, _key)), merged_from=args.merge)
        return
    records = read_records(args.out) if args.resume else []
    done = {_key(r) for r in records}
    for path in datasets(args.data, args.datasets):
        adata, labels, k, kind = load(path)
        for seed in args.seeds:
            for variant in args.variants:
                if (path.stem, variant, seed) in done:
                    continue
                with Timer() as timer:
                    model = SCCSA(k, input_kind=kind, random_state=seed, progress=False, **VARIANTS[variant]).fit(adata)
                record = {"dataset": path.stem, "variant": variant, "seed": seed, **score(labels, model.labels_),
                          "seconds": round(timer.seconds, 2), "torch_threads": training_threads(),
                          "alpha_mean": round(float(model.alpha_.mean()), 4),
                          "alpha_sd": round(float(model.alpha_.std()), 4)}
                records.append(record)
                print(record, flush=True)
                write_json(args.out, records)
    finish(args.out, "Ablations", summarise(records))


if __name__ == "__main__":
    main()
