"""``sccsa-train``: fit scCompressSA on an .h5ad and export a model bundle."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
from click.core import ParameterSource

from sccsa_infer import __version__
from sccsa_infer.atomic import atomic_output, check_no_overlap, check_writable
from sccsa_infer.bundle import OWN_BUNDLES
from sccsa_infer.clierrors import friendly_errors, verbosity_options
from sccsa_infer.errors import InputDataError
from sccsa_infer.metrics import check_eval_labels, evaluate
from sccsa_infer.ontology import check_ontology, read_ontology
from sccsa_infer.validate import obs_column

from .allocator import keep_freed_memory
from .openmp import set_wait_policy
from .options import BY_NAME, CLASSIFY_ONLY, OPTIONS, STAGE2_STOPS, Option, classifies

if TYPE_CHECKING:  # anndata is imported where it is used, after the fast argument and path checks
    import anndata as ad


class AutoOrInteger(click.ParamType):
    """``auto`` or an integer ≥ 2 (the number of clusters, the latent dimension)."""

    def __init__(self, name: str):
        self.name = name

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or str(value).lower() == "auto":
            return value if isinstance(value, int) else "auto"
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor an integer", param, ctx)
        if number < 2:
            self.fail(f"{number} is below the smallest allowed value, 2", param, ctx)
        return number


class Channels(click.ParamType):
    """Three positive integers, e.g. ``16,32,64``."""

    name = "C1,C2,C3"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int, int]:
        if isinstance(value, tuple):
            return value
        try:
            channels = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not three comma-separated integers", param, ctx)
        if len(channels) != 3 or min(channels) < 1:
            self.fail(f"{value!r} is not three positive integers", param, ctx)
        return channels  # type: ignore[return-value]


def _click_type(option: Option) -> Any:
    if option.kind == "k":
        return AutoOrInteger(option.metavar or "N|auto")
    if option.kind == "channels":
        return Channels()
    if option.choices:
        return click.Choice(option.choices)
    if option.kind is int:
        return click.IntRange(None if option.low is None else int(option.low), option.high)
    if option.kind is float:
        return click.FloatRange(option.low, option.high, min_open=option.low_open)
    return str


def table_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one click option per entry of :data:`OPTIONS` (flag = parameter name with dashes)."""
    for option in reversed(OPTIONS):
        if option.kind is bool:
            flags = [f"{option.flag}/--no-{option.flag[2:]}"]
            decorator = click.option(*flags, option.name, default=option.default, show_default=True, help=option.help)
        else:
            flags = [option.flag, *option.aliases, *([option.short] if option.short else [])]
            shown = ",".join(map(str, option.default)) if option.kind == "channels" else option.default
            decorator = click.option(*flags, option.name, type=_click_type(option), default=option.default,
                                     show_default=shown if option.default is not None else False, help=option.help)
        command = decorator(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="sccsa-train")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Where to write the model bundle: a folder, or a file name ending in .zip.")
@table_options
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads for torch (default: torch's choice).")
@click.option("--spin-wait", is_flag=True,
              help="Let idle torch threads spin briefly before they sleep (GOMP_SPINCOUNT=10000): faster on a machine "
                   "you have to yourself, much slower beside busy processes, so off by default.")
@click.option("--eval-key", default=None,
              help="obs column of true labels, read only AFTER training to print ARI/NMI/ACC (never used by the fit).")
@click.option("--write-adata", type=click.Path(path_type=Path), default=None,
              help="Also write the training data with obs['sccsa_cluster'] and obsm['X_sccsa'] to this .h5ad.")
@click.option("--cell-ontology", type=click.Path(path_type=Path), default=None,
              help="JSON file {label: {\"id\": \"CL:0000236\", \"synonyms\": [...]}} giving the --labels-key "
                   "labels their Cell Ontology ids, stored in the bundle (serving prints them; --eval-key matches "
                   "ids and synonyms). Checked against the labels before training.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out bundle (only an sccsa bundle or an empty folder) and --write-adata "
                   "file (only one sccsa wrote); anything else is refused before training.")
@verbosity_options
@friendly_errors
def main(data: Path, out: Path, threads: int | None, spin_wait: bool, eval_key: str | None, write_adata: Path | None,
         cell_ontology: Path | None, overwrite: bool, **params: Any) -> None:
    """Fit scCompressSA on DATA (.h5ad, cells × genes, raw counts by default) and export a bundle.

    Steps: QC + normalise/log1p (Scanpy), F-test gene selection on consensus pseudo-labels
    (no labels needed), gene ordering, SA-CC + convolutional autoencoder pretraining,
    K-means-initialised soft k-means training, export of ONE ONNX graph with its centroids.

    \b
    Examples:
      sccsa-train pbmc.h5ad -k 8 --out pbmc_model/
      sccsa-train atlas.h5ad --labels-key cell_type --layer counts --out atlas_model.zip
      sccsa-train pbmc.h5ad -k 8 --eval-key cell_type --random-state 1 --out m/ --write-adata pbmc_sccsa.h5ad
      sccsa-train rpkm.h5ad -k 7 --input-kind abundance --out m/
      sccsa-train donors.h5ad -k 14 --batch-key donor --out m/
    """
    started = time.perf_counter()
    _check_paths(data, out, write_adata, overwrite)
    ontology = None
    if cell_ontology is not None:
        if params["labels_key"] is None:
            raise click.UsageError("--cell-ontology names the --labels-key labels; give --labels-key too.")
        ontology = read_ontology(cell_ontology)
    context = click.get_current_context()
    explicit = [BY_NAME[name].flag for name in CLASSIFY_ONLY
                if context.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if explicit and not classifies(params["objective"], params["labels_key"]):
        raise click.UsageError(f"{', '.join(explicit)} shape(s) how stage 2 learns the reference labels, so it needs "
                               "a classifying stage 2: give --labels-key COL (with --objective auto or classify), or "
                               f"drop {', '.join(explicit)}.")
    # Idle OpenMP threads sleep (after a brief spin with --spin-wait), so that on a shared machine they
    # leave the cores to the work (speed page, contention). Read when torch loads its OpenMP runtime, just below.
    set_wait_policy(spin_wait)
    keep_freed_memory()  # each step's freed memory stays in the heap instead of being faulted in again
    try:
        import torch

        from .estimator import SCCSA
    except ImportError as exc:
        raise click.ClickException(
            f"sccsa-train needs the training extra ({exc.name or exc} is missing): pip install 'sccsa[train]'"
        ) from None
    from sccsa_infer.io import OWN_RESULTS, read_h5ad

    if threads:
        torch.set_num_threads(threads)
    adata = read_h5ad(data)
    truth = None
    if eval_key is not None:
        truth = obs_column(adata.obs, eval_key, "--eval-key").to_numpy()
        check_eval_labels(truth, eval_key)
    if ontology is not None:
        labels_seen = obs_column(adata.obs, params["labels_key"], "--labels-key").dropna().astype(str).unique()
        check_ontology(ontology, list(labels_seen), f"--cell-ontology {cell_ontology}", error=InputDataError)
    blinded = adata if eval_key in (None, params["labels_key"], params["batch_key"]) else _without_obs_column(adata, eval_key)
    model = SCCSA(**params)
    labels = model.fit_predict(blinded)
    from .distributed import is_main_process

    if not is_main_process():  # under torchrun every process trains; process 0 alone writes and reports
        return
    metrics = {}
    if truth is not None:
        fitted = labels >= 0
        metrics = {k: v for k, v in evaluate(truth[fitted], labels[fitted]).items() if k != "n_cells"}
    if write_adata is None:
        path = model.export(out, metrics=metrics, overwrite=overwrite, cell_ontology=ontology)
    else:  # both written before either is renamed into place: a failure leaves neither
        labelled = model.annotate(adata, copy=True)
        with atomic_output(write_adata, overwrite=overwrite, replaceable=OWN_RESULTS) as tmp:
            labelled.write_h5ad(tmp)
            path = model.export(out, metrics=metrics, overwrite=overwrite, cell_ontology=ontology)
    _print_summary(model, labels, metrics, eval_key, path, time.perf_counter() - started)


def _check_paths(data: Path, out: Path, write_adata: Path | None, overwrite: bool) -> None:
    """Every path check, before torch is imported and long before training: the input exists,
    and no output may replace the input, a folder holding it, or a file sccsa did not write."""
    if not data.exists():
        raise InputDataError(f"Input {data} does not exist. Check the path.")
    check_no_overlap(out, [data])
    check_writable(out, overwrite=overwrite, directory=out.suffix != ".zip", replaceable=OWN_BUNDLES)
    if write_adata is not None:
        from sccsa_infer.io import OWN_RESULTS

        check_no_overlap(write_adata, [data], option="--write-adata")
        check_no_overlap(out, [write_adata], role="the --write-adata file")
        check_writable(write_adata, overwrite=overwrite, replaceable=OWN_RESULTS, option="--write-adata")


def _without_obs_column(adata: ad.AnnData, key: str) -> ad.AnnData:
    """A view-like AnnData sharing ``adata``'s matrices but without ``obs[key]``."""
    import anndata as ad

    return ad.AnnData(X=adata.X, obs=adata.obs.drop(columns=[key]), var=adata.var, layers=dict(adata.layers))


def _print_summary(model: Any, labels: np.ndarray, metrics: dict[str, float], eval_key: str | None, path: Path,
                   seconds: float) -> None:
    state = model.state_
    names = state.cluster_names
    click.echo(f"Trained on {state.n_cells} cells, {len(state.panel.genes)} genes, K={state.n_clusters} "
               f"({state.n_clusters_method}) in {seconds:.1f} s; bundle written to {path}")
    sizes = np.bincount(labels[labels >= 0], minlength=state.n_clusters)
    click.echo("cluster\tname\tcells" if names else "cluster\tcells")
    for k, n in enumerate(sizes):
        click.echo(f"{k}\t{names[k]}\t{n}" if names else f"{k}\t{n}")
    if (labels < 0).any():
        click.echo(f"not fitted (zero counts)\t{int((labels < 0).sum())}")
    alpha = state.alpha
    click.echo(f"SA-CC alpha: mean {alpha.mean():.3f}, sd {alpha.std():.3f}, 5-95% [{np.quantile(alpha, 0.05):.3f}, "
               f"{np.quantile(alpha, 0.95):.3f}]")
    history = state.history
    click.echo(f"stage 2: {len(history.cluster)} epochs, {STAGE2_STOPS[history.stop]}")
    if model.precision == "auto":
        click.echo(f"precision auto: {history.precision} on this machine")
    if metrics:
        click.echo(f"vs {eval_key}: ARI {metrics['ari']:.3f}  NMI {metrics['nmi']:.3f}  ACC {metrics['acc']:.3f}")
    click.echo(json.dumps({"timings_seconds": {k: round(v, 2) for k, v in state.timings.items()}}))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
