"""``sccsa-infer``: label cells with a model bundle (ONNX Runtime only, no torch)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import click

from . import __version__
from .clierrors import friendly_errors, verbosity_options
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_MIN_COVERAGE, MODEL_ENV
from .errors import InputDataError

# The commands import what they use (ONNX Runtime, AnnData I/O, scikit-learn) when they run, so
# that --help and argument errors answer without paying for those imports.


MODEL_HELP = (
    "Model bundle: a folder or .zip written by `sccsa-train`. Default: $"
    + MODEL_ENV
    + " if set, else the PBMC model shipped with sccsa."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="sccsa-infer")
def main() -> None:
    """Label single cells with a trained scCompressSA model (CPU, ONNX Runtime, no torch).

    \b
    Examples:
      sccsa-infer predict pbmc.h5ad --out pbmc_labelled.h5ad
      sccsa-infer predict big.h5ad --model my_bundle/ --layer counts --out labels.parquet
      sccsa-infer info my_bundle/
      sccsa-infer verify my_bundle/
    """


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Output: .h5ad (the input plus obs['sccsa_*'] and obsm['X_sccsa']) or a .csv/.tsv/.parquet table.")
@click.option("--model", "-m", type=click.Path(path_type=Path), default=None, help=MODEL_HELP)
@click.option("--layer", default=None, help="Read raw counts from adata.layers[LAYER] instead of X (.h5ad only).")
@click.option("--gene-key", default=None,
              help="var column holding the gene ids to match (e.g. gene_ids); default: var_names. For 10x .h5/.mtx: gene_ids or gene_symbols.")
@click.option("--total-counts-key", default=None,
              help="obs column with each cell's library size over ALL genes, for files holding only a subset of genes "
                   "(default: row sums over the file's genes).")
@click.option("--batch-size", default=DEFAULT_BATCH_SIZE, show_default=True, type=click.IntRange(1),
              help="Cells read and labelled per chunk; bounds memory use.")
@click.option("--min-coverage", default=DEFAULT_MIN_COVERAGE, show_default=True, type=click.FloatRange(0, 1),
              help="Fail when fewer than this fraction of the model's genes are in the data.")
@click.option("--eval-key", default=None, help="obs column with true labels: print ARI/NMI/ACC (and label accuracy).")
@click.option("--label-map", type=click.Path(path_type=Path), default=None,
              help="CSV/TSV (model name, your name) or JSON {model name: your name}: compare the model's cell-type "
                   "names with --eval-key's vocabulary.")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="ONNX Runtime threads (default: all cores; with --scheduler: per worker, default 1).")
@click.option("--spin-wait", is_flag=True,
              help="Let idle ONNX Runtime threads busy-wait (lower latency on an idle machine; wastes CPU on a "
                   "shared one, so off by default).")
@click.option("--scheduler", default=None, metavar="local:N|tcp://HOST:PORT",
              help="Label on a Dask cluster (pip install 'sccsa[dask]'): local:N starts N worker processes here, an "
                   "address joins a running scheduler whose workers can read DATA (.h5ad). Same output.")
@click.option("--with-latent", is_flag=True, help="Also write the latent coordinates into .csv/.tsv/.parquet tables.")
@click.option("--overwrite/--no-overwrite", default=True, show_default=True,
              help="Replace an existing --out file, if sccsa wrote it (other files are never replaced).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar on stderr when it is a terminal (never in pipes or log files).")
@verbosity_options
@friendly_errors
def predict(data: Path, out: Path, model: Path | None, layer: str | None, gene_key: str | None,
            total_counts_key: str | None, batch_size: int,
            min_coverage: float, eval_key: str | None, label_map: Path | None, threads: int | None, spin_wait: bool,
            scheduler: str | None, with_latent: bool, overwrite: bool, progress: bool) -> None:
    """Label every cell of DATA (.h5ad, 10x .h5, .mtx folder, .csv/.tsv) and write --out.

    Genes are matched to the model by name (case-insensitive, Ensembl versions ignored);
    missing genes count as zero with a warning. Large .h5ad/.h5 files are streamed in chunks.

    \b
    Examples:
      sccsa-infer predict pbmc.h5ad --out labelled.h5ad
      sccsa-infer predict query.h5ad -m bundle/ --layer counts --eval-key cell_type -o q.h5ad
      sccsa-infer predict filtered_feature_bc_matrix.h5 --gene-key gene_ids -o labels.csv
      sccsa-infer predict atlas.h5ad --scheduler local:8 -o labels.parquet
    """
    if not data.exists():  # before the heavy imports below: a wrong path fails at once
        raise InputDataError(f"Input {data} does not exist. Check the path.")
    from .annotation import annotate_file
    from .metrics import load_label_map
    from .predictor import Predictor

    started = time.perf_counter()
    mapping = load_label_map(label_map) if label_map is not None else None
    if scheduler is not None:
        from .dask import require_dask

        require_dask()
    predictor = Predictor(model, n_threads=threads or (1 if scheduler else None), spin_wait=spin_wait)
    with contextlib.ExitStack() as stack:
        client = None
        if scheduler is not None:
            from .dask import connect

            client = stack.enter_context(connect(scheduler))
        summary = annotate_file(predictor, data, out, layer=layer, gene_key=gene_key,
                                total_counts_key=total_counts_key, batch_size=batch_size,
                                min_coverage=min_coverage, eval_key=eval_key, label_map=mapping,
                                with_latent=with_latent, overwrite=overwrite, progress=progress, client=client)
    seconds = time.perf_counter() - started
    names = predictor.bundle.cluster_names
    ontology = predictor.bundle.cell_ontology or {}
    if names and ontology:  # the Cell Ontology id beside each name
        names = [f"{n}\t{ontology[n]['id']}" if n in ontology else f"{n}\t" for n in names]
    click.echo(f"Labelled {summary.n_cells} cells in {seconds:.1f} s ({summary.n_cells / max(seconds, 1e-9):,.0f} cells/s); "
               f"gene coverage {summary.coverage:.1%}; wrote {out}")
    click.echo(("cluster\tname\tCL id\tcells" if ontology else "cluster\tname\tcells") if names else "cluster\tcells")
    for k, n in summary.cluster_sizes.items():
        click.echo(f"{k}\t{names[int(k)]}\t{n}" if names else f"{k}\t{n}")
    click.echo(f"unassigned\t{summary.n_unassigned}" + (f" (of which {summary.n_empty} with zero counts)" if summary.n_empty else ""))
    if summary.metrics:
        metrics = summary.metrics
        line = f"vs {eval_key}: ARI {metrics['ari']:.3f}  NMI {metrics['nmi']:.3f}  ACC {metrics['acc']:.3f}"
        if "label_accuracy" in metrics:
            line += f"  label accuracy {metrics['label_accuracy']:.3f}"
        click.echo(line)


@main.command()
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole metadata as JSON.")
@verbosity_options
@friendly_errors
def info(bundle: Path | None, as_json: bool) -> None:
    """Show what a model bundle contains (default: the shipped model).

    \b
    Examples:
      sccsa-infer info my_bundle/
      sccsa-infer info my_bundle.zip --json | jq .genes
    """
    from .bundle import load_bundle
    from .predictor import default_bundle_path

    loaded = load_bundle(bundle or default_bundle_path())
    meta = loaded.metadata
    if as_json:
        click.echo(json.dumps(meta, indent=1, sort_keys=True))
        return
    names = loaded.cluster_names
    genes = loaded.genes
    training = meta.get("training", {})
    click.echo(f"bundle        {loaded.source}")
    click.echo(f"schema        {meta['schema_version']}   created {meta.get('created', '?')}")
    click.echo(f"input         {loaded.input_kind}, {len(genes)} genes ({', '.join(genes[:5])}, ...)")
    click.echo(f"clusters      {loaded.n_clusters}" + (f": {', '.join(names)}" if names else " (unnamed)"))
    if loaded.cell_ontology:
        click.echo("cell ontology " + ", ".join(f"{name} {term['id']}" for name, term in loaded.cell_ontology.items()))
    click.echo(f"latent dim    {loaded.latent_dim}")
    for label, keys in (("genes", ("genes",)), ("gene order", ("gene_order",)), ("cc", ("cc",)),
                        ("labels key", ("labels_key",)), ("trained on", ("n_cells",)),
                        ("random state", ("random_state", "seed"))):  # 'seed': bundles before 0.2
        key = next((k for k in keys if k in training), None)
        if key is not None:
            click.echo(f"{label:<14}{training[key]}")
    if meta.get("metrics"):
        click.echo("metrics       " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in meta["metrics"].items()))
    click.echo("versions      " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()))
    click.echo("files         " + ", ".join(meta.get("files", {})))


@main.command()
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@verbosity_options
@friendly_errors
def verify(bundle: Path | None) -> None:
    """Check a bundle's file hashes and metadata, then run its self-test.

    The self-test feeds the cells stored in the bundle at export time, matched to the bundle's
    genes by name, through ONNX Runtime here and compares labels and latent coordinates with
    those recorded at export.

    \b
    Example:
      sccsa-infer verify my_bundle/ && echo OK
    """
    from .predictor import Predictor, default_bundle_path
    from .selftest import run_selftest

    predictor = Predictor(bundle or default_bundle_path())
    report = run_selftest(predictor)
    genes = "through gene-name alignment" if report["genes_checked"] else "in panel order (bundle stores no gene names)"
    click.echo(f"{predictor.bundle.source}: hashes OK, metadata OK, self-test OK "
               f"({report['n_cells']} cells {genes}, labels identical, max latent difference "
               f"{report['max_latent_diff']:.2e})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
