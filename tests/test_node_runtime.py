"""The exported model.onnx runs from Node.js (onnxruntime-node) and gives the Python labels.

The script run is the README's Node.js example itself, so the documented code is the tested code."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sccsa_infer import Predictor

NODE_DIR = Path(__file__).parent / "node"
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_node_script() -> str:
    """The ```js block under the README's Node.js heading."""
    section = README.read_text().split("### From another runtime (Node.js)", 1)[1]
    return section.split("```js\n", 1)[1].split("```", 1)[0]

pytestmark = pytest.mark.node


@pytest.fixture(scope="session")
def node_project(tmp_path_factory):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js/npm not installed: cannot check the model from another runtime")
    work = tmp_path_factory.mktemp("node")
    shutil.copy(NODE_DIR / "package.json", work / "package.json")
    (work / "label.js").write_text(readme_node_script())
    env = dict(os.environ, ONNXRUNTIME_NODE_INSTALL="skip")  # its post-install downloads GPU binaries
    result = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.skip(f"npm could not install onnxruntime-node (offline?): {result.stderr[-500:]}")
    return work


def test_node_labels_equal_python(node_project, bundle_dir, query_h5ad, tmp_path):
    import anndata as ad

    predictor = Predictor(bundle_dir)
    query = ad.read_h5ad(query_h5ad)
    alignment = predictor.align(list(query.var_names))
    counts = alignment.take(query.X)
    totals = np.asarray(query.X.sum(axis=1)).ravel()
    payload = tmp_path / "input.json"
    payload.write_text(json.dumps({"counts": counts.tolist(), "total_counts": totals.tolist()}))
    result = subprocess.run(["node", "label.js", str(bundle_dir), str(payload)], cwd=node_project,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    node = json.loads(result.stdout)
    python = predictor.predict(query)
    np.testing.assert_array_equal(np.array(node["label"]), python.cluster)
    np.testing.assert_allclose(np.array(node["latent"]), python.latent, atol=1e-5)
    assert node["name"] == [predictor.bundle.cluster_names[k] for k in python.cluster]
