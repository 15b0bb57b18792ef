"""Mapping a query's genes onto the bundle's panel."""

import numpy as np
import pytest
import scipy.sparse as sp

from sccsa_infer.align import align_genes
from sccsa_infer.errors import InputDataError, SccsaWarning

PANEL = ["CD3E", "MS4A1", "LYZ", "ENSG00000141510"]


def test_exact_alignment_reorders_columns():
    alignment = align_genes(["LYZ", "CD3E", "ENSG00000141510", "MS4A1", "EXTRA"], PANEL)
    x = np.array([[1, 2, 3, 4, 5]], dtype=np.float32)
    assert alignment.coverage == 1.0
    assert alignment.take(x).tolist() == [[2, 4, 1, 3]]
    assert alignment.take(sp.csr_matrix(x)).tolist() == [[2, 4, 1, 3]]


def test_case_and_ensembl_version_are_ignored():
    alignment = align_genes(["cd3e", "Ms4a1", "lyz", "ENSG00000141510.17"], PANEL)
    assert alignment.coverage == 1.0


def test_missing_genes_zero_filled_with_a_warning_that_counts_them():
    with pytest.warns(SccsaWarning, match="1 of the model's 4 genes"):
        alignment = align_genes(["CD3E", "MS4A1", "LYZ"], PANEL)
    assert alignment.missing_genes == ["ENSG00000141510"]
    assert alignment.take(np.ones((2, 3), dtype=np.float32))[:, 3].tolist() == [0, 0]


def test_low_coverage_is_an_error_that_suggests_gene_key():
    with pytest.raises(InputDataError, match="--gene-key"):
        align_genes(["CD3E", "X1", "X2"], PANEL, min_coverage=0.5)


def test_duplicated_panel_gene_in_query_is_an_error():
    with pytest.raises(InputDataError, match="duplicated"):
        align_genes(["CD3E", "cd3e", "MS4A1", "LYZ", "ENSG00000141510"], PANEL)


def test_wrong_width_matrix_rejected():
    alignment = align_genes(PANEL, PANEL)
    with pytest.raises(InputDataError, match="Expected 4 gene columns"):
        alignment.take(np.zeros((1, 3)))
