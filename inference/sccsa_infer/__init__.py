"""sccsa serving half: label cells with an exported scCompressSA model (ONNX Runtime, no torch).

>>> from sccsa_infer import Predictor
>>> predictor = Predictor()                      # the shipped default model  # doctest: +SKIP
>>> prediction = predictor.predict(adata)                                     # doctest: +SKIP
"""

from .versions import package_version

__version__ = package_version("sccsa") or "0+unknown"

from .annotate import AnnotationSummary, annotate, annotate_file  # noqa: E402
from .bundle import Bundle, load_bundle, write_bundle  # noqa: E402
from .errors import (  # noqa: E402
    BundleError,
    InputDataError,
    InvalidParameterError,
    OutputError,
    SccsaError,
    SccsaWarning,
)
from .metrics import evaluate  # noqa: E402
from .predictor import Prediction, Predictor  # noqa: E402

__all__ = [
    "AnnotationSummary",
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
