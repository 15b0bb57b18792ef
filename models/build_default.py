"""Build the default model bundle from data that a dependency ships, and optionally demo it.

The data are Scanpy's ``pbmc68k_reduced`` (700 real PBMCs, 10 FACS-sorted "bulk" labels) with
the raw UMI counts recovered (see ``sccsa_train.datasets``). A stratified 70 % trains the model
in reference mode (the F-test uses the labels, clusters get their names); the other 30 % is
written as a query file and, with ``--demo``, labelled by ``sccsa-infer`` through the exported
ONNX graph, which prints ARI/NMI/ACC and the label accuracy. The same held-out metrics (from the
torch model, whose labels the ONNX graph reproduces) are stored in the bundle's ``metrics``.

    python models/build_default.py --out inference/sccsa_infer/default_model   # the shipped bundle
    python models/build_default.py --out build/demo --demo      # what `make demo` runs
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from sklearn.model_selection import train_test_split

from sccsa_infer import Predictor
from sccsa_infer.metrics import evaluate, label_accuracy

from sccsa_train import SCCSA
from sccsa_train.datasets import LABELS_KEY, pbmc68k_counts

SETTINGS = dict(n_genes=500, labels_key=LABELS_KEY, total_counts_key="n_counts", random_state=0)


def heldout_metrics(model: SCCSA, query) -> dict[str, float]:
    """ARI/NMI/ACC and label accuracy on the query, computed by the serving half exactly as
    ``sccsa-infer --eval-key`` computes them (through a provisional export of the model)."""
    truth = query.obs[LABELS_KEY].astype(str).to_numpy()
    with tempfile.TemporaryDirectory() as folder:
        model.export(Path(folder) / "bundle")
        result = Predictor(Path(folder) / "bundle").predict(query, total_counts="n_counts")
    metrics = {k: v for k, v in evaluate(truth, result.cluster).items() if k != "n_cells"}
    metrics["label_accuracy"] = label_accuracy(truth, result.label)
    return {f"heldout_{k}": float(v) for k, v in metrics.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="bundle folder (with --demo: a work folder)")
    parser.add_argument("--demo", action="store_true", help="also label the held-out cells with sccsa-infer")
    args = parser.parse_args()

    adata = pbmc68k_counts()
    train_idx, query_idx = train_test_split(range(adata.n_obs), test_size=0.3, random_state=0,
                                            stratify=adata.obs[LABELS_KEY])
    reference, query = adata[sorted(train_idx)].copy(), adata[sorted(query_idx)].copy()
    print(f"pbmc68k_reduced counts: {reference.n_obs} reference cells, {query.n_obs} held-out query cells, "
          f"{adata.n_vars} genes, {adata.obs[LABELS_KEY].nunique()} labels", flush=True)

    model = SCCSA(**SETTINGS).fit(reference)
    metrics = heldout_metrics(model, query)
    print("held-out 30 %: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)
    bundle = args.out / "bundle" if args.demo else args.out
    bundle.parent.mkdir(parents=True, exist_ok=True)
    model.export(bundle, metrics=metrics, overwrite=True)  # replaces only an earlier sccsa bundle
    print(f"model bundle written to {bundle}", flush=True)
    if not args.demo:
        return 0

    query_path = args.out / "query.h5ad"
    query.write_h5ad(query_path)
    command = [
        str(Path(sys.executable).with_name("sccsa-infer")), "predict", str(query_path), "--model", str(bundle),
        "--out", str(args.out / "query_labelled.h5ad"), "--eval-key", LABELS_KEY,
        "--total-counts-key", "n_counts", "--no-progress",
    ]
    print("$ " + " ".join(command), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
