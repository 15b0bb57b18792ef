"""Shared fixtures: synthetic count data (for shapes, errors, contracts), the real datasets of
../shared/data (for claims about biology and accuracy), and small trained bundles."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SCCSA_DATA", REPO.parent / "shared" / "data"))


def synthetic_counts(n_cells: int = 240, n_genes: int = 60, n_clusters: int = 3, seed: int = 0,
                     gene_prefix: str = "G", population_seed: int = 0) -> ad.AnnData:
    """Negative-binomial counts with ``n_clusters`` groups that differ in a block of genes each.

    ``population_seed`` fixes the genes' mean expression (the "tissue"); ``seed`` draws cells
    from it, so samples with different seeds come from the same population.
    """
    base = np.random.default_rng(population_seed).gamma(2.0, 1.0, size=n_genes)
    rng = np.random.default_rng(seed + 1000)
    groups = np.arange(n_cells) % n_clusters
    means = np.tile(base, (n_clusters, 1))
    block = n_genes // n_clusters
    for k in range(n_clusters):
        means[k, k * block : (k + 1) * block] *= 6.0
    size = rng.integers(500, 1500, size=n_cells)[:, None] / 1000.0
    mu = means[groups] * size
    dispersion = 5.0
    counts = rng.negative_binomial(dispersion, dispersion / (dispersion + mu)).astype(np.float32)
    adata = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"cell_type": pd.Categorical([f"type{g}" for g in groups])},
                         index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"{gene_prefix}{j}" for j in range(n_genes)]),
    )
    return adata


N_BATCH_GENES = 30


def with_batches(adata: ad.AnnData, batches: list[str], effects: dict[str, float], seed: int = 0) -> ad.AnnData:
    """``adata`` plus 30 genes whose level depends on the cell's batch only, cell i in batch
    ``batches[i % len(batches)]``, in ``obs['donor']``. (Whether training with a batch key beats
    training without it is a claim about real data: tests/test_real_data_slow.py checks it.)"""
    rng = np.random.default_rng(seed)
    names = np.array([batches[i % len(batches)] for i in range(adata.n_obs)])
    level = np.array([effects[b] for b in names])[:, None] * np.ones(N_BATCH_GENES)
    extra = rng.poisson(level).astype(np.float32)
    # the batch also scales every type gene a little, as a donor's depth or chemistry would
    scale = np.array([1.0 + 0.3 * (effects[b] > 5) for b in names])[:, None]
    counts = sp.hstack([sp.csr_matrix(adata.X.multiply(scale)).floor(), sp.csr_matrix(extra)], format="csr")
    var = pd.DataFrame(index=[*adata.var_names, *[f"B{j}" for j in range(N_BATCH_GENES)]])
    obs = adata.obs.assign(donor=pd.Categorical(names))
    return ad.AnnData(X=counts.astype(np.float32), obs=obs, var=var)


def real_dataset(name: str) -> ad.AnnData:
    """A dataset of ../shared/data, or skip the test when that folder is absent."""
    path = DATA_DIR / f"{name}.h5ad"
    if not path.exists():
        pytest.skip(f"real dataset {path} not available (set SCCSA_DATA to the shared data folder)")
    return ad.read_h5ad(path)


@functools.cache
def _benchmark_input_kinds() -> dict[str, str]:
    """``INPUT_KINDS`` of benchmarks/common.py, loaded from its file once per test session."""
    spec = importlib.util.spec_from_file_location("sccsa_benchmarks_common", REPO / "benchmarks" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    return common.INPUT_KINDS


def real_input_kind(name: str) -> str:
    """What the values of shared dataset ``name`` are, as the benchmarks read them (one table for both)."""
    return _benchmark_input_kinds().get(name, "counts")


FAST_TRAINING = dict(pretrain_epochs=30, cluster_epochs=5, batch_size=64, progress=False, latent_dim=8,
                     attention_dim=16, channels=(8, 16, 16))


@pytest.fixture(scope="session")
def synthetic() -> ad.AnnData:
    return synthetic_counts()


@pytest.fixture(scope="session")
def fitted_model(synthetic: ad.AnnData):
    """A tiny SCCSA fitted on synthetic counts with cell-type names (reference mode)."""
    pytest.importorskip("torch")
    from sccsa_train import SCCSA

    return SCCSA(3, labels_key="cell_type", n_genes=40, random_state=0, **FAST_TRAINING).fit(synthetic)


@pytest.fixture(scope="session")
def bundle_dir(fitted_model, tmp_path_factory) -> Path:
    """The exported bundle of ``fitted_model`` (read-only: copy it before altering files)."""
    path = tmp_path_factory.mktemp("bundle") / "model"
    fitted_model.export(path)
    return path


@pytest.fixture(scope="session")
def query_h5ad(tmp_path_factory) -> Path:
    """A query file of fresh synthetic cells (same gene names, other seed)."""
    path = tmp_path_factory.mktemp("query") / "query.h5ad"
    synthetic_counts(n_cells=150, seed=7).write_h5ad(path)
    return path
