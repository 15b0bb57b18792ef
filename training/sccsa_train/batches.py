"""The batch of each training cell (``batch_key``: donor, sample, condition), read and checked once.

Training uses the batches twice: the pseudo-labels come from a Harmony-corrected embedding, and
the decoder receives each cell's batch one-hot (scVI's conditional decoder), so the encoder, the
only part the exported graph holds, need not encode the batch. Serving never needs it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import anndata as ad
import numpy as np
import torch

from sccsa_infer.errors import SccsaWarning
from sccsa_infer.validate import complete_obs_strings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batches:
    """Batch codes of some cells against a fixed list of batch names (code −1: not in the list)."""

    key: str
    names: tuple[str, ...]
    codes: np.ndarray

    def one_hot(self) -> torch.Tensor:
        """[cells, batches] float one-hot; all zeros for a batch outside ``names``."""
        eye = torch.eye(len(self.names) + 1)[:, : len(self.names)]
        return eye[torch.from_numpy(np.where(self.codes < 0, len(self.names), self.codes))]

    def subset(self, rows: np.ndarray) -> Batches:
        """The same batch names for the cells at ``rows``."""
        return Batches(key=self.key, names=self.names, codes=self.codes[rows])

    def sizes(self) -> dict[str, int]:
        """Cells per batch name (what the bundle records)."""
        counts = np.bincount(self.codes[self.codes >= 0], minlength=len(self.names))
        return {name: int(n) for name, n in zip(self.names, counts)}


def read_batches(adata: ad.AnnData, key: str | None, rows: np.ndarray,
                 known: tuple[str, ...] | None = None) -> Batches | None:
    """The batches of ``adata.obs[key]`` at ``rows``; ``known``: the training batches (partial_fit),
    else the distinct values found. None without a key, or (with a warning) when the training cells
    all share one batch, since there is nothing to correct."""
    if key is None:
        return None
    values = complete_obs_strings(
        adata.obs, key, "batch_key", rows,
        f"give every cell a batch (e.g. adata.obs[{key!r}] = adata.obs[{key!r}].astype(str).fillna('unknown')) or "
        "drop those cells.")
    if known is None:
        names = tuple(np.unique(values))
        if len(names) < 2:
            warnings.warn(f"obs[{key!r}] holds one batch ({names[0]!r}) only: training proceeds as without batch_key.",
                          SccsaWarning, stacklevel=3)
            return None
    else:
        names = known
        unseen = sorted(set(values) - set(known))
        if unseen:
            warnings.warn(f"batch(es) {', '.join(map(repr, unseen[:5]))} of obs[{key!r}] were not in training; the "
                          "decoder gets no batch for those cells.", SccsaWarning, stacklevel=3)
    position = {name: i for i, name in enumerate(names)}
    codes = np.array([position.get(value, -1) for value in values], dtype=np.int64)
    log.info("batch_key %r: %d batches", key, len(names))
    return Batches(key=key, names=names, codes=codes)
