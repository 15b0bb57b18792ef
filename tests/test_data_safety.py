"""Nothing the user gave is modified or deleted; outputs appear whole or not at all (issue 12).

These run the CLIs as a user would: every refusal must come before any training or writing,
as one paragraph, and leave every file as it was.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import synthetic_counts
from sccsa_infer.atomic import TEMP_MARK, atomic_output, stale_temporaries
from sccsa_infer.cli import main as infer_main
from sccsa_train.cli import main as train_main

FAST = ["--pretrain-epochs", "5", "--cluster-epochs", "1", "--latent-dim", "4", "--n-genes", "30", "--no-progress"]


def train(*args):
    return CliRunner().invoke(train_main, [str(a) for a in args])


def infer(*args):
    return CliRunner().invoke(infer_main, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if TEMP_MARK in p.name]


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data_dir"
    folder.mkdir()
    synthetic_counts(n_cells=90, n_genes=40).write_h5ad(folder / "cells.h5ad")
    (folder / "notes.txt").write_text("the user's notes")
    return folder


# ----------------------------------------------------------------------------------- sccsa-train
@pytest.mark.parametrize("out_of", ["folder", "parent", "file"])
def test_train_never_replaces_its_input_or_a_folder_holding_it(data_dir, out_of):
    before = snapshot(data_dir.parent)
    out = {"folder": data_dir, "parent": data_dir.parent, "file": data_dir / "cells.h5ad"}[out_of]
    result = train(data_dir / "cells.h5ad", "-k", "3", "--out", out, "--overwrite", *FAST)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "never overwrites its input" in result.output or "current folder" in result.output, result.output
    assert "Trained" not in result.output  # refused before any training
    assert snapshot(data_dir.parent) == before


def test_train_refuses_the_current_folder(data_dir, monkeypatch):
    elsewhere = data_dir.parent / "elsewhere.h5ad"
    shutil.copy(data_dir / "cells.h5ad", elsewhere)
    monkeypatch.chdir(data_dir)
    for out in (".", "..", str(data_dir)):
        result = train(elsewhere, "-k", "3", "--out", out, "--overwrite", *FAST)
        assert result.exit_code != 0 and "current folder" in result.output, result.output
    assert (data_dir / "notes.txt").read_text() == "the user's notes"


def test_overwrite_replaces_only_bundles_and_empty_folders(data_dir, tmp_path):
    cells = data_dir / "cells.h5ad"
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "table.csv").write_text("precious")
    result = train(cells, "-k", "3", "--out", foreign, "--overwrite", *FAST)
    assert result.exit_code != 0 and "not an sccsa model bundle or an empty folder" in result.output
    assert (foreign / "table.csv").read_text() == "precious"
    (tmp_path / "model.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip, not a bundle
    result = train(cells, "-k", "3", "--out", tmp_path / "model.zip", "--overwrite", *FAST)
    assert result.exit_code != 0 and "not an sccsa model bundle" in result.output

    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(cells, "-k", "3", "--out", empty, "--overwrite", *FAST).exit_code == 0
    first = json.loads((empty / "bundle.json").read_text())["created"]
    result = train(cells, "-k", "3", "--out", empty, *FAST)
    assert result.exit_code != 0 and "already exists" in result.output
    result = train(cells, "-k", "3", "--out", empty, "--overwrite", "--seed", "1", *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads((empty / "bundle.json").read_text())["training"]["random_state"] == 1
    assert first and no_temporaries(tmp_path)


def test_write_adata_never_replaces_the_input_or_foreign_files(data_dir, tmp_path):
    cells = data_dir / "cells.h5ad"
    before = cells.read_bytes()
    result = train(cells, "-k", "3", "--out", tmp_path / "m", "--write-adata", cells, "--overwrite", *FAST)
    assert result.exit_code != 0 and "never overwrites its input" in result.output
    foreign = tmp_path / "other.h5ad"
    synthetic_counts(n_cells=20).write_h5ad(foreign)
    foreign_bytes = foreign.read_bytes()
    result = train(cells, "-k", "3", "--out", tmp_path / "m", "--write-adata", foreign, "--overwrite", *FAST)
    assert result.exit_code != 0 and "not a result file that sccsa wrote" in result.output
    result = train(cells, "-k", "3", "--out", tmp_path / "m", "--write-adata", tmp_path / "m" / "x.h5ad", *FAST)
    assert result.exit_code != 0 and "--write-adata file" in result.output
    assert cells.read_bytes() == before and foreign.read_bytes() == foreign_bytes
    assert not (tmp_path / "m").exists()


def test_train_output_symlink_is_refused(data_dir, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    result = train(data_dir / "cells.h5ad", "-k", "3", "--out", tmp_path / "link", "--overwrite", *FAST)
    assert result.exit_code != 0 and "symbolic link" in result.output


def test_all_nan_eval_key_fails_before_training(data_dir, tmp_path):
    adata = ad.read_h5ad(data_dir / "cells.h5ad")
    adata.obs["truth"] = np.full(adata.n_obs, np.nan)
    path = tmp_path / "nan_truth.h5ad"
    adata.write_h5ad(path)
    result = train(path, "-k", "3", "--out", tmp_path / "m", "--eval-key", "truth", *FAST)
    assert result.exit_code != 0 and "no labelled cells" in result.output and "Traceback" not in result.output
    assert "Trained" not in result.output and not (tmp_path / "m").exists()


def test_silent_cases_now_warn(tmp_path):
    adata = synthetic_counts(n_cells=24, n_genes=40)
    adata.obs_names = ["same"] * 2 + list(adata.obs_names[2:])
    path = tmp_path / "small.h5ad"
    adata.write_h5ad(path)
    result = train(path, "-k", "3", "--out", tmp_path / "m", *FAST[:-3], "--n-genes", "500", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "n_genes=500 but only 40 genes" in result.output
    assert "fewer than 10 per cluster" in result.output
    assert "duplicated cell name" in result.output


# ----------------------------------------------------------------------------------- sccsa-infer
def test_predict_replaces_only_its_own_results(bundle_dir, query_h5ad, tmp_path):
    for name, content in (("table.csv", "cell,score\na,1\n"), ("table.tsv", "cell\tx\n")):
        foreign = tmp_path / name
        foreign.write_text(content)
        for flag in ("--overwrite", "--no-overwrite"):
            result = infer("predict", query_h5ad, "-m", bundle_dir, "-o", foreign, flag, "--no-progress")
            assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert foreign.read_text() == content
    foreign_h5ad = tmp_path / "other.h5ad"
    synthetic_counts(n_cells=10).write_h5ad(foreign_h5ad)
    before = foreign_h5ad.read_bytes()
    result = infer("predict", query_h5ad, "-m", bundle_dir, "-o", foreign_h5ad, "--no-progress")
    assert result.exit_code != 0 and "not a result file that sccsa wrote" in result.output
    assert foreign_h5ad.read_bytes() == before
    for name in ("ours.csv", "ours.h5ad", "ours.parquet"):
        for _ in range(2):  # the second run replaces the first run's result
            result = infer("predict", query_h5ad, "-m", bundle_dir, "-o", tmp_path / name, "--no-progress")
            assert result.exit_code == 0, result.output
    result = infer("predict", query_h5ad, "-m", bundle_dir, "-o", tmp_path / "ours.csv", "--no-overwrite")
    assert result.exit_code != 0 and "already exists" in result.output
    assert no_temporaries(tmp_path)


def test_predict_all_nan_eval_key_writes_nothing(bundle_dir, tmp_path):
    adata = synthetic_counts(n_cells=30, seed=3)
    adata.obs["truth"] = pd.Categorical([None] * adata.n_obs, categories=["B", "T"])
    path = tmp_path / "q.h5ad"
    adata.write_h5ad(path)
    result = infer("predict", path, "-m", bundle_dir, "-o", tmp_path / "o.csv", "--eval-key", "truth", "--no-progress")
    assert result.exit_code != 0 and "no labelled cells" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.csv").exists()


def test_corrupt_text_inputs_give_clean_errors(bundle_dir, tmp_path):
    adata = synthetic_counts(n_cells=40, seed=2)
    frame = pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var_names)
    full = frame.to_csv().encode()
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(full)[: len(gzip.compress(full)) // 2])
    (tmp_path / "header.csv").write_text("cell," + ",".join(adata.var_names) + "\n")
    mtx = tmp_path / "mtx"
    mtx.mkdir()
    (mtx / "features.tsv").write_text("".join(f"{g}\t{g}\n" for g in adata.var_names))
    (mtx / "barcodes.tsv").write_text("".join(f"{c}\n" for c in adata.obs_names))
    body = "".join(f"{j + 1} {i + 1} 3\n" for i in range(40) for j in range(0, 60, 7))
    (mtx / "matrix.mtx").write_text(f"%%MatrixMarket matrix coordinate integer general\n60 40 {40 * 9}\n" + body[:200])
    (tmp_path / "x.h5ad").mkdir()
    cases = {"cut.csv.gz": "truncated", "header.csv": "no cell rows", "mtx": "Matrix Market", "x.h5ad": "is a folder"}
    for name, message in cases.items():
        result = infer("predict", tmp_path / name, "-m", bundle_dir, "-o", tmp_path / "o.csv", "--no-progress")
        assert result.exit_code != 0, name
        assert message in result.output and "Traceback" not in result.output and "Aborted" not in result.output, (
            name, result.output)
    assert not (tmp_path / "o.csv").exists()


def test_coverage_error_does_not_echo_huge_gene_names(bundle_dir, tmp_path):
    adata = synthetic_counts(n_cells=10)
    adata.var_names = [f"{'X' * 20000}{j}" for j in range(adata.n_vars)]
    path = tmp_path / "long.h5ad"
    adata.write_h5ad(path)
    result = infer("predict", path, "-m", bundle_dir, "-o", tmp_path / "o.csv", "--no-progress")
    assert result.exit_code != 0 and "Only 0 of the model's" in result.output
    assert len(result.output) < 2000


def test_predict_warns_on_duplicate_cell_names(bundle_dir, tmp_path):
    adata = synthetic_counts(n_cells=20, seed=5)
    adata.obs_names = ["a"] * 20
    path = tmp_path / "dups.h5ad"
    adata.write_h5ad(path)
    result = infer("predict", path, "-m", bundle_dir, "-o", tmp_path / "o.h5ad", "--no-progress")
    assert result.exit_code == 0 and "duplicated cell name" in result.output


# ------------------------------------------------------------------------------ faults mid-write
def _run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          **kwargs)


def test_sigterm_during_a_write_leaves_nothing(tmp_path):
    code = f"""
        import os, signal, click
        from pathlib import Path
        from sccsa_infer.atomic import atomic_output
        from sccsa_infer.clierrors import friendly_errors

        @click.command()
        @friendly_errors
        def main():
            with atomic_output(Path({str(tmp_path / 'out.csv')!r})) as tmp:
                tmp.write_text("half")
                os.kill(os.getpid(), signal.SIGTERM)
                tmp.write_text("never reached")

        main()
    """
    done = _run_python(code)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_killed_runs_are_cleaned(tmp_path):
    target = tmp_path / "out.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = os.uname().nodename
    stale = tmp_path / f".out.csv{TEMP_MARK}{host}-{dead_pid}-abcd1234"
    stale.write_text("left by a killed run")
    stale_dir = tmp_path / f".out.csv{TEMP_MARK}{host}-{dead_pid}-dir12345"
    stale_dir.mkdir()
    live = tmp_path / f".out.csv{TEMP_MARK}{host}-{os.getpid()}-live1234"
    live.write_text("a running writer's")
    other_host = tmp_path / f".out.csv{TEMP_MARK}otherhost-{dead_pid}-abcd1234"
    other_host.write_text("another machine's writer")
    assert set(stale_temporaries(target)) == {stale, stale_dir}
    with atomic_output(target) as tmp:
        tmp.write_text("x")
    assert not stale.exists() and not stale_dir.exists()
    assert live.exists() and other_host.exists() and target.read_text() == "x"


def test_full_disk_is_one_clean_message(bundle_dir, query_h5ad, tmp_path):
    """A file-size limit makes every write past 64 kB fail, as a full disk does."""
    code = f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        from sccsa_infer.cli import main
        sys.argv = ["sccsa-infer", "predict", {str(query_h5ad)!r}, "-m", {str(bundle_dir)!r},
                    "-o", {str(tmp_path / 'o.h5ad')!r}, "--no-progress"]
        main()
    """
    done = _run_python(code)
    assert done.returncode == 1, done.stderr
    assert "Could not write" in done.stderr and "larger than this system allows" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_space_left_on_a_real_full_file_system(bundle_dir, query_h5ad, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        result = infer("predict", query_h5ad, "-m", bundle_dir, "-o", mount / "o.h5ad", "--no-progress")
        assert result.exit_code != 0 and "the disk is full" in result.output, result.output
        assert "Traceback" not in result.output and list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_the_empty_folder_check_closes_its_listing(tmp_path):
    """Checking whether an existing --out folder may be filled lists it; the listing is closed even
    when the first entry answers the question (an unclosed one printed 'Warning: unclosed scandir
    iterator' at the end of `sccsa-train --overwrite`)."""
    import gc
    import warnings

    from sccsa_infer.atomic import is_empty_folder

    full = tmp_path / "full"
    full.mkdir()
    for name in ("a", "b"):
        (full / name).write_text(name)
    (tmp_path / "empty").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not is_empty_folder(full)
        assert is_empty_folder(tmp_path / "empty")
        assert not is_empty_folder(full / "a") and not is_empty_folder(tmp_path / "missing")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
