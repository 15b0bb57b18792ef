"""Which training cells the bundle's self-test replays (``selftest.npz``).

They are chosen when the fit is stored, and only their raw panel counts are kept: keeping every
training cell's counts until export cost a second copy of the panel's counts (≈1 GiB at 10⁶
cells, and twice that while it was cut from the full matrix) for the few cells the self-test
needs.
"""

from __future__ import annotations

import numpy as np
import torch

SELFTEST_CELLS_PER_CLUSTER = 2


def selftest_cells(squared_distances: torch.Tensor, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Positions of the most clearly assigned cells of each cluster (largest gap between the
    nearest and the second-nearest centroid), :data:`SELFTEST_CELLS_PER_CLUSTER` per cluster."""
    ordered = torch.sort(squared_distances.detach().cpu(), dim=1).values.numpy()
    margin = ordered[:, 1] - ordered[:, 0]
    chosen: list[int] = []
    for cluster in range(n_clusters):
        members = np.flatnonzero(labels == cluster)
        chosen.extend(members[np.argsort(-margin[members])][:SELFTEST_CELLS_PER_CLUSTER].tolist())
    return np.asarray(chosen, dtype=np.int64)
