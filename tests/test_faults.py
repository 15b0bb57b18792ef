"""Faults and reproducibility across both halves (issue: bad input, faults, determinism)."""

import os
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from conftest import synthetic_counts
from sccsa_infer import Predictor
from sccsa_infer.cli import main as infer_main
from sccsa_infer.errors import SccsaWarning
from sccsa_infer.versions import warn_on_version_mismatch
from sccsa_train.cli import main as train_main


def test_version_mismatch_that_matters_warns():
    with pytest.warns(SccsaWarning, match="newer than"):
        messages = warn_on_version_mismatch({"sccsa": "99.0.0", "onnxruntime": "1.0"}, "bundle")
    assert len(messages) == 1
    assert warn_on_version_mismatch({"sccsa": "0.0.1", "onnxruntime": "1.0.0"}, "bundle") == []


def test_bundle_from_a_newer_sccsa_warns_on_load(fitted_model, tmp_path, monkeypatch):
    from sccsa_train import export

    versions = export.training_versions()
    monkeypatch.setattr(export, "training_versions", lambda: dict(versions, sccsa="99.1.0"))
    fitted_model.export(tmp_path / "newer")
    with pytest.warns(SccsaWarning, match="sccsa 99.1.0"):
        Predictor(tmp_path / "newer")


def test_sccsa_infer_is_deterministic(bundle_dir, query_h5ad, tmp_path):
    outputs = []
    for name in ("a.csv", "b.csv"):
        result = CliRunner().invoke(infer_main, ["predict", str(query_h5ad), "-m", str(bundle_dir), "-o",
                                                 str(tmp_path / name), "--with-latent", "--no-progress"])
        assert result.exit_code == 0, result.output
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]


def test_input_file_is_never_modified(bundle_dir, query_h5ad, tmp_path):
    before = query_h5ad.read_bytes()
    CliRunner().invoke(infer_main, ["predict", str(query_h5ad), "-m", str(bundle_dir), "-o", str(tmp_path / "o.h5ad"),
                                    "--no-progress"])
    assert query_h5ad.read_bytes() == before


def test_training_rejects_truncated_and_non_anndata_files(tmp_path):
    good = tmp_path / "good.h5ad"
    synthetic_counts(n_cells=50).write_h5ad(good)
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (tmp_path / "text.h5ad").write_text("hello")
    for path in (truncated, tmp_path / "text.h5ad"):
        result = CliRunner().invoke(train_main, [str(path), "-k", "3", "--out", str(tmp_path / "m")])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert "truncated" in result.output or "not a readable HDF5" in result.output
        assert not (tmp_path / "m").exists()


def test_training_rejects_zero_cells_and_bad_values(tmp_path):
    empty = tmp_path / "empty.h5ad"
    ad.AnnData(X=sp.csr_matrix((0, 4), dtype=np.float32), var=pd.DataFrame(index=list("abcd"))).write_h5ad(empty)
    result = CliRunner().invoke(train_main, [str(empty), "-k", "2", "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "zero cells" in result.output
    bad = synthetic_counts(n_cells=30)
    x = bad.X.toarray()
    x[3, 3] = np.nan
    bad.X = sp.csr_matrix(x)
    path = tmp_path / "nan.h5ad"
    bad.write_h5ad(path)
    result = CliRunner().invoke(train_main, [str(path), "-k", "2", "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "NaN" in result.output and "cell 'cell3'" in result.output


def test_unwritable_output_location(bundle_dir, query_h5ad, tmp_path):
    """A folder the process may not write into (for root, which ignores permissions, /sys)."""
    if os.geteuid() == 0:
        if not os.path.isdir("/sys"):
            pytest.skip("no read-only location available for root")
        target, locked = Path("/sys/sccsa-test.csv"), None
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "o.csv"
    try:
        result = CliRunner().invoke(infer_main, ["predict", str(query_h5ad), "-m", str(bundle_dir), "-o", str(target),
                                                 "--no-progress"])
        assert result.exit_code != 0 and "Cannot write" in result.output and "Traceback" not in result.output
        assert not target.exists()
    finally:
        if locked is not None:
            locked.chmod(0o700)


def test_zip_bundle_is_served(bundle_dir, query_h5ad, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "model"), "zip", bundle_dir)
    expected = Predictor(bundle_dir).predict(ad.read_h5ad(query_h5ad)).cluster
    np.testing.assert_array_equal(Predictor(archive).predict(ad.read_h5ad(query_h5ad)).cluster, expected)
