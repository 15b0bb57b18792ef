"""sccsa training half: fit scCompressSA (torch) and export ONNX model bundles.

>>> from sccsa_train import SCCSA
>>> model = SCCSA(n_clusters=8).fit(adata)   # doctest: +SKIP
>>> model.export("bundle/")                  # doctest: +SKIP
"""

from sccsa_infer import __version__

from .estimator import SCCSA

__all__ = ["SCCSA", "__version__"]
