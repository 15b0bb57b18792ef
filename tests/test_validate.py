"""Value and gene-name checks shared by both halves."""

import numpy as np
import pytest
import scipy.sparse as sp

from sccsa_infer.errors import InputDataError
from sccsa_infer.validate import check_gene_names, check_library_sizes, check_values, normalise_gene_name


def test_counts_pass():
    check_values(sp.csr_matrix(np.array([[0, 1, 5], [2, 0, 0]], dtype=np.float32)), "counts")


@pytest.mark.parametrize("bad, words", [(np.nan, "NaN"), (np.inf, "infinite"), (-1.0, "negative")])
def test_bad_values_name_the_cell_and_gene(bad, words):
    x = np.array([[0, 1, 5], [2, bad, 0]], dtype=np.float32)
    with pytest.raises(InputDataError, match=words) as info:
        check_values(sp.csr_matrix(x), "counts", cell_names=["a", "b"], gene_names=["g1", "g2", "g3"])
    assert "cell 'b'" in str(info.value) and "gene 'g2'" in str(info.value)


def test_non_integer_counts_point_to_layer_and_input_kind():
    x = sp.csr_matrix(np.array([[0.5, 1.0]], dtype=np.float32))
    with pytest.raises(InputDataError, match="not raw counts") as info:
        check_values(x, "counts")
    assert "--layer counts" in str(info.value) and "--input-kind" in str(info.value)
    check_values(x, "abundance")
    check_values(x, "lognorm")


def test_serving_hints_name_only_fixes_that_exist_there():
    """sccsa-infer has no --input-kind: the model's kind is fixed, so the hint says what it reads."""
    with pytest.raises(InputDataError, match="not raw counts") as info:
        check_values(sp.csr_matrix(np.array([[0.5, 1.0]], dtype=np.float32)), "counts", serving=True)
    message = str(info.value)
    assert "This model reads raw counts" in message and "--layer counts" in message
    assert "--input-kind " not in message.replace("sccsa-train --input-kind", "")


def test_row_offset_reported_for_chunks():
    x = np.array([[1.0, np.nan]])
    with pytest.raises(InputDataError, match="cell #100"):
        check_values(x, "counts", row_offset=100)


def test_unknown_input_kind():
    with pytest.raises(InputDataError, match="Unknown input kind"):
        check_values(np.zeros((1, 1)), "rpkm")


@pytest.mark.parametrize("name, key", [("ENSG00000141510.16", "ENSG00000141510"), (" cd3e ", "CD3E"),
                                       ("ENSMUSG00000000001.4", "ENSMUSG00000000001"), ("gene_1", "GENE_1"),
                                       ("HLA-DRB1.2", "HLA-DRB1.2")])
def test_normalise_gene_name(name, key):
    assert normalise_gene_name(name) == key


def test_case_only_duplicates_are_refused_with_a_fix_that_works():
    """PISD and Pisd are distinct strings (var_names_make_unique leaves them alone) but collide
    when genes are matched case-insensitively: the suggested one-liner must resolve it."""
    import re

    import anndata as ad
    import pandas as pd

    adata = ad.AnnData(X=np.ones((2, 3), dtype=np.float32), var=pd.DataFrame(index=["PISD", "Actb", "Pisd"]))
    with pytest.raises(InputDataError, match="differ only in case") as info:
        check_gene_names(list(adata.var_names))
    snippet = re.search(r"`([^`]+)`", str(info.value)).group(1)
    namespace = {"adata": adata}
    exec(snippet, namespace)
    fixed = namespace["adata"]
    assert list(fixed.var_names) == ["PISD", "Actb"]
    check_gene_names(list(fixed.var_names))


def test_duplicates_outside_relevant_genes_are_ignored():
    check_gene_names(["A", "B", "B"], relevant={"A"})
    with pytest.raises(InputDataError, match="duplicated"):
        check_gene_names(["A", "B", "B"], relevant={"B"})


def test_numbers_only_gene_names_rejected():
    with pytest.raises(InputDataError, match="numbers only"):
        check_gene_names(["0", "1", "2"])


def test_empty_gene_list_and_names():
    with pytest.raises(InputDataError, match="no genes"):
        check_gene_names([])
    with pytest.raises(InputDataError, match="empty gene name"):
        check_gene_names(["A", " "])


def test_library_sizes_must_cover_the_counts():
    sums = np.array([10.0, 5.0])
    assert check_library_sizes([100, 5], sums, "n_counts").tolist() == [100.0, 5.0]
    with pytest.raises(InputDataError, match="smaller than the counts"):
        check_library_sizes([100, 4], sums, "n_counts")
    with pytest.raises(InputDataError, match="missing or infinite"):
        check_library_sizes([np.nan, 5], sums, "n_counts")


def test_repeated_cell_names_found_across_and_within_blocks_in_constant_memory():
    from sccsa_infer.validate import DuplicateNames

    names = [f"cell{i}" for i in range(100_000)]
    blocks = [names[i : i + 1000] for i in range(0, len(names), 1000)]
    clean = DuplicateNames()
    for block in blocks:
        clean.add(block)
    assert not clean.may_repeat  # no false negatives, and at this size no false candidates either
    assert clean.confirm(blocks) == (0, None)
    repeated = [*blocks, ["cell5", "new", "new"], ["cell99999"]]  # across blocks, within one, and the last
    tally = DuplicateNames()
    for block in repeated:
        tally.add(block)
    count, example = tally.confirm(repeated)
    assert tally.may_repeat and count == 3 and example in {"cell5", "new", "cell99999"}
    assert tally._bitmap.nbytes == DuplicateNames.BITS // 8  # the same 16 MiB for any number of cells


def test_repeated_names_found_whatever_their_type():
    from sccsa_infer.validate import DuplicateNames

    # integer names and their text, bytes and their text: the same name in a written table
    blocks = [np.arange(50), np.array(["7", "x"], dtype=object), np.array([b"y", 3.5, "y"], dtype=object)]
    tally = DuplicateNames()
    for block in blocks:
        tally.add(block)
    assert tally.confirm(blocks) == (2, "7")


def test_checks_run_in_chunks_and_still_count_every_bad_value(monkeypatch):
    """The checks scan a few values at a time (bounded temporaries at 10⁶ cells), and the message
    still counts every bad value and names the first, wherever the chunks fall."""
    import sccsa_infer.validate as validate

    monkeypatch.setattr(validate, "CHECK_CHUNK", 2)
    x = np.array([[0, 1, 5, 2], [2, 0, 0.5, 3], [1.5, 4, 0, 2.5]], dtype=np.float32)
    with pytest.raises(InputDataError, match=r"3 value\(s\) are not whole numbers \(first: 0.5") as info:
        check_values(sp.csr_matrix(x), "counts", cell_names=["a", "b", "c"], gene_names=["g1", "g2", "g3", "g4"])
    assert "cell 'b', gene 'g3'" in str(info.value)
    x[2, 3] = -1
    with pytest.raises(InputDataError, match=r"1 negative value\(s\) \(first: -1 at cell #2"):
        check_values(x, "abundance")
