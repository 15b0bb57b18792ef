"""sccsa serving half: label cells with an exported scCompressSA model (ONNX Runtime, no torch).

>>> import sccsa_infer
>>> adata = sccsa_infer.annotate("pbmc.h5ad")       # the shipped default model  # doctest: +SKIP
>>> predictor = sccsa_infer.Predictor("bundle/")                                # doctest: +SKIP
>>> prediction = predictor.predict(adata)                                        # doctest: +SKIP

Importing the package is cheap: ONNX Runtime, AnnData's I/O and scikit-learn are imported when
first used (PEP 562 module attributes), so ``sccsa-infer --help`` and a bad path answer fast.
"""

from importlib import import_module
from typing import Any

from .errors import BundleError, InputDataError, InvalidParameterError, OutputError, SccsaError, SccsaWarning
from .versions import SERVING_DISTRIBUTION, package_version

__version__ = package_version(SERVING_DISTRIBUTION) or "0+unknown"

_LAZY = {
    "AnnotationSummary": "annotation",
    "annotate": "annotation",
    "annotate_file": "annotation",
    "Bundle": "bundle",
    "load_bundle": "bundle",
    "write_bundle": "bundle",
    "evaluate": "metrics",
    "BlockLabeller": "block",
    "Prediction": "prediction",
    "Predictor": "predictor",
}

__all__ = [
    "AnnotationSummary",
    "BlockLabeller",
    "Bundle",
    "BundleError",
    "InputDataError",
    "InvalidParameterError",
    "OutputError",
    "Prediction",
    "Predictor",
    "SccsaError",
    "SccsaWarning",
    "annotate",
    "annotate_file",
    "evaluate",
    "load_bundle",
    "write_bundle",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sccsa_infer' has no attribute {name!r}")
