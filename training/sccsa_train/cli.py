"""``sccsa-train``: fit scCompressSA on an .h5ad and export a model bundle."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anndata as ad
import click
import numpy as np

from sccsa_infer import __version__
from sccsa_infer.atomic import atomic_output, check_no_overlap, check_writable
from sccsa_infer.bundle import OWN_BUNDLES
from sccsa_infer.clierrors import friendly_errors
from sccsa_infer.errors import InputDataError
from sccsa_infer.io import OWN_RESULTS, read_h5ad
from sccsa_infer.metrics import check_eval_labels, evaluate
from sccsa_infer.validate import INPUT_KINDS

from .options import CC_MODES, CENTROID_INITS, GENE_ORDERS, GENE_SELECTIONS


class ClusterCount(click.ParamType):
    """``auto`` or an integer ≥ 2."""

    name = "K|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or str(value).lower() == "auto":
            return value if isinstance(value, int) else "auto"
        try:
            k = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor an integer", param, ctx)
        if k < 2:
            self.fail("need at least 2 clusters", param, ctx)
        return k


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="sccsa-train")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Where to write the model bundle: a folder, or a file name ending in .zip.")
@click.option("--n-clusters", "-k", type=ClusterCount(), default="auto", show_default=True,
              help="Number of clusters K, or 'auto' (the number of --labels-key classes when given, "
                   "else estimated from the data: see README).")
@click.option("--n-genes", default=1000, show_default=True, type=click.IntRange(4),
              help="Number of genes the model reads (F-test or HVG selection).")
@click.option("--genes", "gene_selection", type=click.Choice(GENE_SELECTIONS), default="ftest", show_default=True,
              help="ftest: SelectKBest(f_classif) on pseudo-labels (or --labels-key); hvg: Scanpy highly variable genes.")
@click.option("--labels-key", default=None,
              help="obs column of known cell types: the F-test uses them (reference-atlas mode) and clusters get their names.")
@click.option("--gene-order", type=click.Choice(GENE_ORDERS), default="correlation", show_default=True,
              help="Order of genes in the 1-D signal/2-D image: correlation (co-expressed genes adjacent), fscore, input.")
@click.option("--cc", type=click.Choice(CC_MODES), default="sa", show_default=True,
              help="Coefficient compression: sa (self-attention, per-cell alpha), fixed (--alpha), off (no autocorrelation).")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Weight of the expression channel with --cc fixed (1 = expression only).")
@click.option("--latent-dim", default=10, show_default=True, type=click.IntRange(2), help="Latent dimension L.")
@click.option("--input-kind", type=click.Choice(INPUT_KINDS), default="counts", show_default=True,
              help="counts: raw integer counts; abundance: RPKM/FPKM/TPM (normalised + log1p like counts); "
                   "lognorm: already log1p-normalised (used as is).")
@click.option("--layer", default=None, help="Use adata.layers[LAYER] instead of X (e.g. counts).")
@click.option("--total-counts-key", default=None,
              help="obs column with each cell's library size over ALL genes, for files that hold only a subset of "
                   "genes (default: the row sums). Serving then needs the same option or full-gene queries.")
@click.option("--pretrain-epochs", default=60, show_default=True, type=click.IntRange(1), help="Stage 1 epochs.")
@click.option("--cluster-epochs", default=100, show_default=True, type=click.IntRange(0),
              help="Stage 2 maximum epochs (stops earlier when < --tol of labels change).")
@click.option("--tol", default=0.001, show_default=True, type=click.FloatRange(0, 1),
              help="Stage 2 stops when fewer than this fraction of labels change in an epoch.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(2))
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(0, min_open=True), help="Stage 1 learning rate.")
@click.option("--cluster-lr", default=1e-4, show_default=True, type=click.FloatRange(0, min_open=True), help="Stage 2 learning rate.")
@click.option("--beta-scale", default=5.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Softness of r: beta = beta_scale / (mean squared distance to the nearest centroid at init).")
@click.option("--init", "centroid_init", type=click.Choice(CENTROID_INITS), default="kmeans", show_default=True,
              help="Initial centroids: K-means on the pretrained latent, or the latent means of the labels the "
                   "gene selection used (consensus pseudo-labels, or --labels-key).")
@click.option("--kl-weight", default=1.0, show_default=True, type=click.FloatRange(0), help="alpha1, weight of KL(R||P).")
@click.option("--recon-weight", default=100.0, show_default=True, type=click.FloatRange(0), help="alpha2, weight of the reconstruction MSE.")
@click.option("--latent-norm-weight", default=0.0, show_default=True, type=click.FloatRange(0), help="lambda of the -lambda*z'z term.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same labels on CPU).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto uses a CUDA GPU when torch sees one.")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads for torch (default: torch's choice).")
@click.option("--eval-key", default=None,
              help="obs column of true labels, read only AFTER training to print ARI/NMI/ACC (never used by the fit).")
@click.option("--write-adata", type=click.Path(path_type=Path), default=None,
              help="Also write the training data with obs['sccsa_cluster'] and obsm['X_sccsa'] to this .h5ad.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out bundle (only an sccsa bundle or an empty folder) and --write-adata "
                   "file (only one sccsa wrote); anything else is refused before training.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
@friendly_errors
def main(data: Path, out: Path, n_clusters: int | str, n_genes: int, gene_selection: str, labels_key: str | None,
         gene_order: str, cc: str, alpha: float, latent_dim: int, input_kind: str, layer: str | None, total_counts_key: str | None,
         pretrain_epochs: int, cluster_epochs: int, tol: float, batch_size: int, lr: float, cluster_lr: float,
         beta_scale: float, centroid_init: str, kl_weight: float, recon_weight: float, latent_norm_weight: float, seed: int, device: str,
         threads: int | None, eval_key: str | None, write_adata: Path | None, overwrite: bool, progress: bool) -> None:
    """Fit scCompressSA on DATA (.h5ad, cells × genes, raw counts by default) and export a bundle.

    Steps: QC + normalise/log1p (Scanpy), F-test gene selection on consensus pseudo-labels
    (no labels needed), gene ordering, SA-CC + convolutional autoencoder pretraining,
    K-means-initialised soft k-means training, export of ONE ONNX graph with its centroids.

    \b
    Examples:
      sccsa-train pbmc.h5ad -k 8 --out pbmc_model/
      sccsa-train atlas.h5ad --labels-key cell_type --layer counts --out atlas_model.zip
      sccsa-train pbmc.h5ad -k 8 --eval-key cell_type --seed 1 --out m/ --write-adata pbmc_sccsa.h5ad
      sccsa-train rpkm.h5ad -k 7 --input-kind abundance --out m/
    """
    started = time.perf_counter()
    _check_paths(data, out, write_adata, overwrite)
    try:
        import torch

        from .estimator import SCCSA
    except ImportError as exc:
        raise click.ClickException(
            f"sccsa-train needs the training extra ({exc.name or exc} is missing): pip install 'sccsa[train]'"
        ) from None
    if threads:
        torch.set_num_threads(threads)
    adata = read_h5ad(data)
    truth = None
    if eval_key is not None:
        if eval_key not in adata.obs.columns:
            raise InputDataError(f"--eval-key {eval_key!r} is not an obs column; available: {', '.join(adata.obs.columns)}.")
        truth = adata.obs[eval_key].to_numpy()
        check_eval_labels(truth, eval_key)
    blinded = adata if eval_key in (None, labels_key) else _without_obs_column(adata, eval_key)
    model = SCCSA(n_clusters, n_genes=n_genes, genes=gene_selection, labels_key=labels_key, gene_order=gene_order,
                  cc=cc, alpha=alpha, latent_dim=latent_dim, input_kind=input_kind, layer=layer,
                  total_counts_key=total_counts_key,
                  pretrain_epochs=pretrain_epochs, cluster_epochs=cluster_epochs, batch_size=batch_size, lr=lr,
                  cluster_lr=cluster_lr, tol=tol, beta_scale=beta_scale, init=centroid_init,
                  kl_weight=kl_weight,
                  reconstruction_weight=recon_weight, latent_norm_weight=latent_norm_weight, seed=seed,
                  device=device, progress=progress)
    labels = model.fit_predict(blinded)
    metrics = {}
    if truth is not None:
        fitted = labels >= 0
        metrics = {k: v for k, v in evaluate(truth[fitted], labels[fitted]).items() if k != "n_cells"}
    if write_adata is None:
        path = model.export(out, metrics=metrics, overwrite=overwrite)
    else:  # both written before either is renamed into place: a failure leaves neither
        labelled = model.annotate(adata, copy=True)
        with atomic_output(write_adata, overwrite=overwrite, replaceable=OWN_RESULTS) as tmp:
            labelled.write_h5ad(tmp)
            path = model.export(out, metrics=metrics, overwrite=overwrite)
    _print_summary(model, labels, metrics, eval_key, path, time.perf_counter() - started)


def _check_paths(data: Path, out: Path, write_adata: Path | None, overwrite: bool) -> None:
    """Every path check, before torch is imported and long before training: the input exists,
    and no output may replace the input, a folder holding it, or a file sccsa did not write."""
    if not data.exists():
        raise InputDataError(f"Input {data} does not exist. Check the path.")
    check_no_overlap(out, [data])
    check_writable(out, overwrite=overwrite, directory=out.suffix != ".zip", replaceable=OWN_BUNDLES)
    if write_adata is not None:
        check_no_overlap(write_adata, [data], option="--write-adata")
        check_no_overlap(out, [write_adata], role="the --write-adata file")
        check_writable(write_adata, overwrite=overwrite, replaceable=OWN_RESULTS, option="--write-adata")


def _without_obs_column(adata: ad.AnnData, key: str) -> ad.AnnData:
    """A view-like AnnData sharing ``adata``'s matrices but without ``obs[key]``."""
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
    click.echo(f"stage 2: {len(history.cluster)} epochs, " + ("converged" if history.converged else "stopped at the epoch limit"))
    if metrics:
        click.echo(f"vs {eval_key}: ARI {metrics['ari']:.3f}  NMI {metrics['nmi']:.3f}  ACC {metrics['acc']:.3f}")
    click.echo(json.dumps({"timings_seconds": {k: round(v, 2) for k, v in state.timings.items()}}))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
