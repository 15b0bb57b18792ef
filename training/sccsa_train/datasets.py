"""Real data that ships with a dependency, for the demo and the default model.

Scanpy's wheel contains ``pbmc68k_reduced``: 700 PBMCs (Zheng et al. 2017) × 765 genes with
10 FACS-sorted ("bulk") labels. Its ``X`` is scaled, but ``raw.X`` holds log1p(counts /
n_counts × 1e4) rounded to 3 decimals and ``obs['n_counts']`` the library sizes, so the integer
UMI counts are exactly recoverable: round(expm1(raw.X) × n_counts / 1e4). The rounding error
before ``round`` is below 0.1 for every entry, so the recovery is unambiguous.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

LABELS_KEY = "bulk_labels"


def pbmc68k_counts() -> ad.AnnData:
    """``pbmc68k_reduced`` as raw UMI counts (X and layers['counts']), with its labels.

    ``obs['n_counts']`` keeps the library size over all genes of the original matrix; because
    only 765 genes are shipped, the counts here sum to less than that.
    """
    reduced = sc.datasets.pbmc68k_reduced()
    lognorm = sp.csr_matrix(reduced.raw.X, dtype=np.float64)
    sizes = reduced.obs["n_counts"].to_numpy(dtype=np.float64)
    scaled = sp.diags(sizes / 1e4) @ lognorm.expm1()
    counts = sp.csr_matrix(np.round(scaled.toarray()), dtype=np.float32)
    counts.eliminate_zeros()
    adata = ad.AnnData(
        X=counts,
        obs=reduced.obs[[LABELS_KEY, "n_counts"]].copy(),
        var=reduced.raw.var[[]].copy(),
    )
    adata.layers["counts"] = adata.X.copy()
    adata.uns["source"] = "scanpy.datasets.pbmc68k_reduced(); counts recovered from raw.X and obs['n_counts']"
    return adata
