"""The README's shell examples run as written.

Every line of the README's `sccsa-train` and `sccsa-infer` example blocks, and the deploy recipe,
is run verbatim with bash in a folder that holds the files they name (real PBMCs from Scanpy's
``pbmc68k_reduced`` as raw counts, with a ``cell_type`` column and a ``counts`` layer), each line
in a fresh copy of that folder. The blocks that install packages, build Docker images or reach a
remote Dask scheduler are not run (they need the network or a cluster); neither are ``make demo``
and ``make test``, which CI itself runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

README = REPO / "README.md"
SKIPPED = ("pip install", "docker ", "make ", "tcp://")


def bash_blocks() -> list[str]:
    """The README's ```bash blocks, in order."""
    return re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)


def example_lines() -> list[str]:
    """The one-line examples of the blocks that call sccsa-train / sccsa-infer (the deploy recipe
    runs as one script, in its own test)."""
    lines = []
    for block in bash_blocks():
        if "models/current" in block:
            continue
        for line in block.splitlines():
            line = line.strip()
            command = line.split("#", 1)[0]
            if command.startswith(("sccsa-train ", "sccsa-infer ")) and not any(s in command for s in SKIPPED):
                lines.append(line)
    return list(dict.fromkeys(lines))  # the Dask example appears twice


def deploy_recipe() -> str:
    """The indented deploy recipe (train a new version folder, repoint a symlink, serve)."""
    block = next(b for b in bash_blocks() if "models/current" in b)
    return "\n".join(line.strip() for line in block.splitlines() if line.strip())


def write_10x_h5(path: Path, adata) -> None:
    """A Cell Ranger v3 ``filtered_feature_bc_matrix.h5`` of ``adata`` (genes × cells CSC)."""
    import scipy.sparse as sp

    matrix = sp.csr_matrix(adata.X)  # cells × genes CSR == genes × cells CSC
    genes = np.array([g.encode() for g in adata.var_names])
    with h5py.File(path, "w") as f:
        group = f.create_group("matrix")
        group["data"], group["indices"], group["indptr"] = matrix.data, matrix.indices, matrix.indptr
        group["shape"] = np.array([adata.n_vars, adata.n_obs])
        group["barcodes"] = np.array([c.encode() for c in adata.obs_names])
        features = group.create_group("features")
        features["id"], features["name"] = genes, genes
        features["feature_type"] = np.array([b"Gene Expression"] * adata.n_vars)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The files the examples name, and the models m/ and pbmc_model/ the serving lines use."""
    from sccsa_train import SCCSA
    from sccsa_train.datasets import pbmc68k_counts

    folder = tmp_path_factory.mktemp("readme")
    pbmc = pbmc68k_counts()
    pbmc.obs["cell_type"] = pbmc.obs["bulk_labels"].astype(str)
    for name in ("pbmc", "atlas", "big", "query", "cells"):
        pbmc.write_h5ad(folder / f"{name}.h5ad")
    donors = pbmc.copy()
    donors.obs["donor"] = np.where(np.arange(donors.n_obs) % 3 == 0, "donor_a", "donor_b")
    donors.write_h5ad(folder / "donors.h5ad")
    abundance = pbmc.copy()
    totals = np.asarray(abundance.X.sum(axis=1)).ravel()
    abundance.X = abundance.X.multiply(1e6 / totals[:, None]).tocsr()  # TPM-like values
    abundance.write_h5ad(folder / "yan.h5ad")
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", pbmc)
    model = SCCSA(labels_key="cell_type", random_state=0, progress=False).fit(pbmc)
    for name in ("m", "pbmc_model"):
        model.export(folder / name)
    (folder / "models").mkdir()
    model.export(folder / "models" / "v1")
    (folder / "models" / "current").symlink_to("v1")
    names = sorted(set(model.state_.cluster_names))
    pd.DataFrame({"model": names, "yours": [n.upper() for n in names]}).to_csv(folder / "names.csv", index=False)
    return folder


def run_in_copy(workspace: Path, tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a copy of the workspace; a training example gets it without the model
    folders the examples write (they would be refused as existing outputs)."""
    work = tmp_path / "w"
    outputs = ("m", "pbmc_model") if script.startswith("sccsa-train") else ()
    shutil.copytree(workspace, work, symlinks=True, ignore=lambda folder, names: [n for n in names if
                                                                                  Path(folder) == workspace and n in outputs])
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_examples_are_found():
    lines = example_lines()
    assert sum(line.startswith("sccsa-train") for line in lines) >= 5
    assert sum(line.startswith("sccsa-infer") for line in lines) >= 8


@pytest.mark.parametrize("line", example_lines(), ids=[f"line{i}" for i in range(len(example_lines()))])
def test_readme_example_runs_as_written(workspace, tmp_path, line):
    if "--scheduler" in line:
        pytest.importorskip("distributed", reason="the Dask example needs the dask extra")
    done = run_in_copy(workspace, tmp_path, line)
    assert done.returncode == 0, f"{line}\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr


def test_readme_deploy_recipe_runs_as_written(workspace, tmp_path):
    done = run_in_copy(workspace, tmp_path, "cp query.h5ad q.h5ad\n" + deploy_recipe())  # q.h5ad: its query
    assert done.returncode == 0, f"{deploy_recipe()}\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
    work = tmp_path / "w"
    assert os.readlink(work / "models" / "current") == "v2" and (work / "q_labelled.h5ad").exists()
