"""The gene panel: F-test (or HVG) selection, gene order, and per-gene standardisation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectKBest, SelectorMixin, f_classif

from sccsa_infer.errors import InputDataError

from .options import GENE_ORDERS, GENE_SELECTIONS

GeneSelection = Literal["ftest", "hvg"]
GeneOrder = Literal["correlation", "fscore", "input"]
CLIP = 10.0


class HighlyVariableGeneSelector(SelectorMixin, BaseEstimator):
    """scikit-learn selector wrapping ``scanpy.pp.highly_variable_genes`` (Seurat flavour) on
    log-normalised data, so HVG and F-test selection are saved and used the same way."""

    def __init__(self, k: int = 1000):
        self.k = k

    def fit(self, X: pd.DataFrame | sp.spmatrix | np.ndarray, y: object = None) -> HighlyVariableGeneSelector:
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
            X = X.sparse.to_coo() if hasattr(X, "sparse") else X.to_numpy()
        adata = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.pp.highly_variable_genes(adata, n_top_genes=self.k)
        self.scores_ = np.nan_to_num(adata.var["dispersions_norm"].to_numpy(dtype=np.float64), nan=-np.inf)
        self.support_ = adata.var["highly_variable"].to_numpy(dtype=bool)
        self.n_features_in_ = X.shape[1]
        return self

    def _get_support_mask(self) -> np.ndarray:
        return self.support_


def fit_selector(
    lognorm: sp.spmatrix,
    genes: list[str],
    n_genes: int,
    method: str,
    labels: np.ndarray | None,
) -> SelectKBest | HighlyVariableGeneSelector:
    """Fit ``SelectKBest(f_classif, k=n_genes)`` on ``labels`` (``method='ftest'``) or the HVG
    selector, on a (sparse) DataFrame so that the saved selector knows its gene names."""
    k = min(n_genes, len(genes))
    frame = pd.DataFrame.sparse.from_spmatrix(sp.csr_matrix(lognorm), columns=list(genes))
    if method == "ftest":
        if labels is None:
            raise ValueError("the F-test needs labels (pseudo-labels or the user's)")
        if len(np.unique(labels)) < 2:
            raise InputDataError("The F-test needs at least two groups of cells, but the labels have one.")
        selector: SelectKBest | HighlyVariableGeneSelector = SelectKBest(f_classif, k=k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant genes within groups give NaN F-scores
            selector.fit(frame, labels)
        selector.scores_ = np.nan_to_num(selector.scores_, nan=0.0)
    elif method == "hvg":
        selector = HighlyVariableGeneSelector(k=k).fit(frame)
    else:
        raise InputDataError(f"Unknown gene selection {method!r}; use one of {', '.join(GENE_SELECTIONS)}.")
    return selector


def order_genes(values: np.ndarray, scores: np.ndarray, method: str) -> np.ndarray:
    """Permutation of the selected genes (columns of ``values``, cells × genes).

    ``correlation``: leaf order of average-linkage clustering on 1 − Pearson correlation, so that
    co-expressed genes sit side by side (what the autocorrelation and the 2-D convolutions see);
    ``fscore``: decreasing selection score; ``input``: unchanged.
    """
    n = values.shape[1]
    if method == "input" or n < 3:
        return np.arange(n)
    if method == "fscore":
        return np.argsort(-scores, kind="stable")
    if method != "correlation":
        raise InputDataError(f"Unknown gene order {method!r}; use one of {', '.join(GENE_ORDERS)}.")
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(values, rowvar=False)
    corr = np.nan_to_num(corr, nan=0.0)
    distance = np.clip(1.0 - corr, 0.0, 2.0)
    distance = (distance + distance.T) / 2
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average")
    return leaves_list(tree)


@dataclass
class GenePanel:
    """The genes the model reads, in graph order, with their standardisation constants."""

    genes: list[str]
    mean: np.ndarray
    std: np.ndarray
    scores: np.ndarray
    clip: float = CLIP

    def columns_in(self, genes: Sequence[str]) -> list[int]:
        """Position of each panel gene, in panel order, among ``genes`` (the columns of a matrix)."""
        where = {gene: i for i, gene in enumerate(genes)}
        return [where[gene] for gene in self.genes]

    def standardise(self, lognorm_panel: np.ndarray) -> np.ndarray:
        """(x − mean) / std, clipped to ±clip, float32."""
        z = (np.asarray(lognorm_panel, dtype=np.float64) - self.mean) / self.std
        return np.clip(z, -self.clip, self.clip).astype(np.float32)


def build_panel(
    lognorm: sp.spmatrix,
    genes: list[str],
    selector: SelectKBest | HighlyVariableGeneSelector,
    order: str,
) -> tuple[GenePanel, np.ndarray]:
    """Selected genes in the chosen order with training means/stds; also the cells × panel
    log-normalised matrix (dense)."""
    chosen = np.flatnonzero(selector.get_support())
    values = sp.csr_matrix(lognorm)[:, chosen].toarray()
    scores = np.asarray(selector.scores_, dtype=np.float64)[chosen]
    permutation = order_genes(values, scores, order)
    chosen, values, scores = chosen[permutation], values[:, permutation], scores[permutation]
    mean = values.mean(axis=0, dtype=np.float64)
    std = values.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    panel = GenePanel(genes=[genes[i] for i in chosen], mean=mean, std=std, scores=scores)
    return panel, values
