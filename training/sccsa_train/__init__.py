"""sccsa training half: fit scCompressSA (torch) and export ONNX model bundles.

>>> from sccsa_train import SCCSA
>>> model = SCCSA(n_clusters=8).fit(adata)   # doctest: +SKIP
>>> model.export("bundle/")                  # doctest: +SKIP

Importing this package does not import torch; ``SCCSA`` (and ``sccsa-train``) need the
training extra: ``pip install 'sccsa[train]'``.
"""

from typing import Any

from sccsa_infer import __version__

__all__ = ["SCCSA", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "SCCSA":
        try:
            from .estimator import SCCSA
        except ImportError as exc:
            raise ImportError(f"sccsa_train.SCCSA needs the training extra: pip install 'sccsa[train]' ({exc})") from exc
        return SCCSA
    raise AttributeError(f"module 'sccsa_train' has no attribute {name!r}")
