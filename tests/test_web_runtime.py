"""The browser page (inference/web/, ONNX Runtime Web) labels cells in headless Chromium exactly
as Python does: same clusters, same unassigned cells, the same latents up to float rounding."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from sccsa_infer import Predictor

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.node


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("headless Chromium is not installed (apt-get install chromium; `make test` installs it as root)")


def readme_site_commands() -> str:
    """The README's web-page block up to (not including) the line that starts the server."""
    section = (REPO / "README.md").read_text().split("### From a web page (ONNX Runtime Web)", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.split("python -m http.server", 1)[0]


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The site the README's commands build: inference/web/ with onnxruntime-web's dist/ as ort/."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: cannot fetch onnxruntime-web")
    work = tmp_path_factory.mktemp("web")
    (work / "inference").symlink_to(REPO / "inference")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_site_commands()], cwd=work,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and "npm err" in done.stderr.lower():
        pytest.skip(f"npm could not install onnxruntime-web (offline?): {done.stderr[-500:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    return work / "site"


class Handler(SimpleHTTPRequestHandler):
    """Static files (module scripts and WebAssembly with their MIME types) and one POST: the result."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def do_POST(self) -> None:
        self.server.result = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()
        self.server.posted.set()

    def log_message(self, *args) -> None:
        pass


def label_in_browser(site: Path, cells: dict, bundle_dir: Path, timeout: float = 180) -> dict:
    shutil.copytree(bundle_dir, site / "bundle", dirs_exist_ok=True)
    (site / "cells.json").write_text(json.dumps(cells))
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(site)))
    server.posted, server.result = threading.Event(), None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html?bundle=bundle/&cells=cells.json&report=/report"
    browser = subprocess.Popen([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                f"--user-data-dir={site.parent / 'profile'}", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.posted.wait(timeout), "the page posted no result"
    finally:
        browser.terminate()
        browser.wait(30)
        server.shutdown()
    assert "error" not in server.result, server.result["error"]
    return server.result


def test_browser_labels_equal_python(site, bundle_dir, query_h5ad):
    import anndata as ad

    predictor = Predictor(bundle_dir)
    query = ad.read_h5ad(query_h5ad)
    matrix = query.X.toarray() if hasattr(query.X, "toarray") else np.array(query.X)
    totals = matrix.sum(axis=1)
    matrix[0] = 0  # no counts in the model's genes (its library size kept): unassigned everywhere
    alignment = predictor.align(list(query.var_names))
    counts = alignment.take(matrix)
    web = label_in_browser(site, {"counts": counts.tolist(), "total_counts": totals.tolist()}, bundle_dir)
    python = predictor.labeller(alignment)(matrix, totals)
    np.testing.assert_array_equal(web["label"], python.cluster)
    np.testing.assert_array_equal(web["unassigned"], python.unassigned)
    assert web["unassigned"][0]
    np.testing.assert_allclose(web["latent"], python.latent, atol=1e-4)
    np.testing.assert_allclose(web["confidence"], python.confidence, atol=1e-4)
    assert web["name"] == ([predictor.bundle.cluster_names[k] for k in python.cluster]
                           if predictor.bundle.cluster_names else None)
