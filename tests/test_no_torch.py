"""The serving half imports and labels cells with torch (and the training half) unavailable."""

import json
import subprocess
import sys
from pathlib import Path

import sccsa_infer

SERVING_MODULES = sorted(p.stem for p in Path(sccsa_infer.__file__).parent.glob("*.py") if p.stem != "__init__")

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'sccsa_train', 'onnx', 'onnxscript', 'scanpy'):
            raise ImportError(f'{name} is blocked: the serving half must not import it')
sys.meta_path.insert(0, Block())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=300)


def test_every_serving_module_imports_without_torch():
    assert "cli" in SERVING_MODULES and "predictor" in SERVING_MODULES
    code = "import importlib, json\n"
    code += f"mods = {SERVING_MODULES!r}\n"
    code += "[importlib.import_module('sccsa_infer.' + m) for m in mods]\n"
    code += "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sccsa_train'))))\n"
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_labels_cells_without_torch(bundle_dir, query_h5ad, tmp_path):
    out = tmp_path / "labels.csv"
    code = (
        "from sccsa_infer.cli import main\n"
        f"main([\"predict\", {str(query_h5ad)!r}, \"--model\", {str(bundle_dir)!r}, \"--out\", {str(out)!r}, \"--no-progress\"],"
        " standalone_mode=True)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert out.exists() and len(out.read_text().splitlines()) == 151


def test_import_and_help_stay_light():
    """`import sccsa_infer`, the CLI module and `--help` load neither ONNX Runtime nor
    scikit-learn nor AnnData's I/O: those come when a command runs (cold start, fast failure)."""
    import subprocess
    import sys

    code = ("import sys, sccsa_infer, sccsa_infer.cli, sccsa_train.cli; "
            "from click.testing import CliRunner; "
            "assert CliRunner().invoke(sccsa_infer.cli.main, ['predict', '--help']).exit_code == 0; "
            "assert CliRunner().invoke(sccsa_train.cli.main, ['--help']).exit_code == 0; "
            "heavy = [m for m in ('onnxruntime', 'sklearn', 'anndata', 'torch', 'scanpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_package_functions_survive_submodule_imports():
    """``sccsa_infer.annotate`` stays the function after the CLI or the Dask engine imported the
    module that defines it (a submodule named like a package attribute would replace it)."""
    code = ("import sccsa_infer, sccsa_infer.annotation, sccsa_infer.cli; "
            "assert callable(sccsa_infer.annotate) and callable(sccsa_infer.annotate_file), sccsa_infer.annotate")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_opening_a_model_leaves_out_the_data_stack(bundle_dir):
    """``Predictor(bundle)`` (cold start: import + session) loads ONNX Runtime but neither AnnData
    (nor, through it, Dask) nor scikit-learn nor pandas: those come with the data, the output
    columns or --eval-key."""
    code = (f"import sys; from sccsa_infer import Predictor; Predictor({str(bundle_dir)!r}); "
            "heavy = [m for m in ('anndata', 'dask', 'sklearn', 'torch', 'h5py', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy; assert 'onnxruntime' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
