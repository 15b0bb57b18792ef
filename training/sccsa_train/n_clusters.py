"""Estimate the number of clusters K when the user asks for ``auto``.

The estimate is the number of Leiden communities (resolution 1.0, Scanpy defaults) on the
standard PCA neighbour graph that hold at least ``MIN_FRACTION`` of the cells: Scanpy's usual
clustering, with the specks a resolution-1 run splits off ignored.
"""

from __future__ import annotations

import logging
import numpy as np
import scipy.sparse as sp

from .pseudolabels import clustering_embedding, leiden

log = logging.getLogger(__name__)

RESOLUTION = 1.0
MIN_FRACTION = 0.01
METHOD = f"Leiden communities at resolution {RESOLUTION} holding >= {MIN_FRACTION:.0%} of cells"


def estimate(lognorm: sp.spmatrix | np.ndarray, *, seed: int = 0) -> int:
    """K for log-normalised data (cells × genes); at least 2."""
    embedding = clustering_embedding(lognorm, seed=seed)
    labels = leiden(embedding, RESOLUTION, seed)
    sizes = np.bincount(labels)
    big = int((sizes >= max(2, MIN_FRACTION * len(labels))).sum())
    log.info("estimated K = %d (%s; %d communities in all)", max(2, big), METHOD, len(sizes))
    return max(2, big)
