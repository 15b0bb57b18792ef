"""Build the default model bundle from data that a dependency ships, and optionally demo it.

The data are Scanpy's ``pbmc68k_reduced`` (700 real PBMCs, 10 FACS-sorted "bulk" labels) with
the raw UMI counts recovered (see ``sccsa_train.datasets``). A stratified 70 % trains the model
in reference mode (the F-test uses the labels, clusters get their names); the other 30 % is
written as a query file and, with ``--demo``, labelled by ``sccsa-infer`` through the exported
ONNX graph, which prints ARI/NMI/ACC and the label accuracy. The same held-out metrics (from the
torch model, whose labels the ONNX graph reproduces) are stored in the bundle's ``metrics``.

    python models/build_default.py --out inference/sccsa_infer/default_model   # the shipped bundle
    python models/build_default.py --out build/demo --demo      # what `make demo` runs

The clusters are named by Cell Ontology (CL) terms; the bundle's ``cell_ontology`` record gives
each name its CL id and synonyms (the sorted label it came from and the names other references
use), so ``--eval-key`` scores queries labelled in any of those vocabularies. The held-out
per-type table (precision, recall, F1 and support of each name) is written into
``models/README.md`` between its ``heldout`` markers with ``--write-table`` (``make default-model``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from sklearn.metrics import classification_report
from sklearn.model_selection import train_test_split

from sccsa_infer import Predictor
from sccsa_infer.metrics import evaluate, label_accuracy
from sccsa_infer.prediction import UNASSIGNED

from sccsa_train import SCCSA
from sccsa_train.datasets import LABELS_KEY, pbmc68k_counts

CELL_TYPE = "cell_type"  # the CL name of each cell, what the model is trained on
SETTINGS = dict(n_genes=500, labels_key=CELL_TYPE, total_counts_key="n_counts", random_state=0)
README = Path(__file__).with_name("README.md")
TABLE_START, TABLE_END = "<!-- heldout:start -->", "<!-- heldout:end -->"

# The sorted populations of pbmc68k_reduced's bulk labels as Cell Ontology terms:
# bulk label -> (CL name, CL id, synonyms other references and annotation tools use).
BULK_TO_CL: dict[str, tuple[str, str, list[str]]] = {
    "CD14+ Monocyte": ("CD14-positive monocyte", "CL:0001054",
                       ["CD14 Mono", "CD14+ Mono", "CD14+ Monocytes", "Classical monocytes"]),
    "CD19+ B": ("B cell", "CL:0000236", ["B", "B cells", "CD19+ B cells"]),
    "CD34+": ("hematopoietic precursor cell", "CL:0008001", ["HSPC", "CD34+ cells"]),
    "CD4+/CD25 T Reg": ("regulatory T cell", "CL:0000815", ["Treg", "Regulatory T cells", "CD4+/CD25+ T Reg"]),
    "CD4+/CD45RA+/CD25- Naive T": ("naive thymus-derived CD4-positive, alpha-beta T cell", "CL:0000895",
                                   ["CD4 Naive", "Naive CD4 T", "Naive CD4+ T cells"]),
    "CD4+/CD45RO+ Memory": ("CD4-positive, alpha-beta memory T cell", "CL:0000897",
                            ["CD4 Memory", "Memory CD4 T", "Memory CD4+ T cells"]),
    "CD56+ NK": ("natural killer cell", "CL:0000623", ["NK", "NK cells", "CD56+ NK cells"]),
    "CD8+ Cytotoxic T": ("CD8-positive, alpha-beta T cell", "CL:0000625", ["CD8 T", "CD8+ T cells", "CD8+ T"]),
    "CD8+/CD45RA+ Naive Cytotoxic": ("naive thymus-derived CD8-positive, alpha-beta T cell", "CL:0000900",
                                     ["CD8 Naive", "Naive CD8 T", "Naive CD8+ T cells"]),
    "Dendritic": ("dendritic cell", "CL:0000451", ["DC", "Dendritic cells"]),
}


def cell_ontology() -> dict[str, dict[str, object]]:
    """The bundle's ``cell_ontology`` record: CL name -> id and synonyms (the bulk label first)."""
    return {name: {"id": cl_id, "synonyms": [bulk, *synonyms]} for bulk, (name, cl_id, synonyms) in BULK_TO_CL.items()}


def with_cl_names(adata):
    """The data with ``obs['cell_type']``: the Cell Ontology name of each cell's bulk label."""
    names = {bulk: name for bulk, (name, _, _) in BULK_TO_CL.items()}
    adata.obs[CELL_TYPE] = adata.obs[LABELS_KEY].astype(str).map(names).astype("category")
    if adata.obs[CELL_TYPE].isna().any():
        raise ValueError(f"bulk labels without a Cell Ontology term: {set(adata.obs[LABELS_KEY]) - set(names)}")
    return adata


def per_type_table(truth, predicted) -> str:
    """Markdown table of each type's held-out precision, recall, F1 and number of cells."""
    report = classification_report(truth, predicted, labels=sorted(set(truth)), output_dict=True, zero_division=0)
    ontology = cell_ontology()
    rows = ["| cell type (CL name) | CL id | held-out cells | recall | precision | F1 |", "|---|---|---|---|---|---|"]
    for name in sorted(set(truth), key=lambda n: -report[n]["support"]):
        r = report[name]
        rows.append(f"| {name} | {ontology[name]['id']} | {int(r['support'])} | {r['recall']:.2f} | "
                    f"{r['precision']:.2f} | {r['f1-score']:.2f} |")
    unassigned = sum(p == UNASSIGNED for p in predicted)
    rows.append(f"\n{len(truth)} held-out cells, {unassigned} unassigned (counted as wrong); label accuracy "
                f"{label_accuracy(truth, predicted):.3f}, macro-F1 {report['macro avg']['f1-score']:.3f}.")
    return "\n".join(rows)


def write_table(table: str) -> None:
    """Replace the held-out table in models/README.md (between its markers)."""
    text = README.read_text(encoding="utf-8")
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    README.write_text(text[:start] + "\n" + table + "\n" + text[end:], encoding="utf-8")


def heldout_metrics(model: SCCSA, query) -> tuple[dict[str, float], str]:
    """ARI/NMI/ACC and label accuracy on the query, computed by the serving half exactly as
    ``sccsa-infer --eval-key`` computes them (through a provisional export of the model), and
    the per-type table."""
    truth = query.obs[CELL_TYPE].astype(str).to_numpy()
    with tempfile.TemporaryDirectory() as folder:
        model.export(Path(folder) / "bundle", cell_ontology=cell_ontology())
        result = Predictor(Path(folder) / "bundle").predict(query, total_counts="n_counts")
    metrics = {k: v for k, v in evaluate(truth, result.cluster).items() if k != "n_cells"}
    metrics["label_accuracy"] = label_accuracy(truth, result.label)
    return {f"heldout_{k}": float(v) for k, v in metrics.items()}, per_type_table(truth, list(result.label))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="bundle folder (with --demo: a work folder)")
    parser.add_argument("--demo", action="store_true", help="also label the held-out cells with sccsa-infer")
    parser.add_argument("--write-table", action="store_true",
                        help="write the held-out per-type table into models/README.md (make default-model)")
    args = parser.parse_args()

    adata = with_cl_names(pbmc68k_counts())
    train_idx, query_idx = train_test_split(range(adata.n_obs), test_size=0.3, random_state=0,
                                            stratify=adata.obs[LABELS_KEY])
    reference, query = adata[sorted(train_idx)].copy(), adata[sorted(query_idx)].copy()
    print(f"pbmc68k_reduced counts: {reference.n_obs} reference cells, {query.n_obs} held-out query cells, "
          f"{adata.n_vars} genes, {adata.obs[CELL_TYPE].nunique()} labels", flush=True)

    model = SCCSA(**SETTINGS).fit(reference)
    metrics, table = heldout_metrics(model, query)
    print("held-out 30 %: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)
    print(table, flush=True)
    bundle = args.out / "bundle" if args.demo else args.out
    bundle.parent.mkdir(parents=True, exist_ok=True)
    model.export(bundle, metrics=metrics, overwrite=True, cell_ontology=cell_ontology())  # replaces only a bundle
    print(f"model bundle written to {bundle}", flush=True)
    if args.write_table:
        write_table(table)
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
