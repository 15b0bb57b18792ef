"""The network's input, made dense only a mini-batch or a chunk at a time.

Training reads the standardised panel (:meth:`GenePanel.standardise`) of every cell many times,
but a dense copy of all of it is cells × genes × 4 bytes: 4 GB at a million cells and a
1000-gene panel, on top of the sparse data it comes from. :class:`NetworkInput` keeps the
panel's log-normalised values sparse (the panel columns only, in panel order) and standardises
the rows each step asks for, with the same float64 arithmetic, so the network sees exactly the
numbers the dense copy held.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .genes import GenePanel


class NetworkInput:
    """Cells × panel genes, standardised on demand and placed on ``device``.

    ``input[rows]`` (a slice, or an array of positions) is the same input restricted to those
    cells, without copying data (each ``torchrun`` process embeds its share this way, and the
    centroids start from a sample); :meth:`take` makes rows dense.
    """

    def __init__(self, values: sp.spmatrix | np.ndarray, panel: GenePanel, device: torch.device | str = "cpu",
                 rows: np.ndarray | None = None):
        if values.shape[1] != len(panel.genes):
            raise ValueError(f"values have {values.shape[1]} columns for a panel of {len(panel.genes)} genes")
        self.values = values if isinstance(values, sp.csr_matrix) else sp.csr_matrix(values, dtype=np.float32)
        self.panel = panel
        self.device = torch.device(device)
        self.rows = rows  # positions in ``values`` this input covers (None: all of them)

    @classmethod
    def from_lognorm(cls, lognorm: sp.spmatrix, genes: Sequence[str], panel: GenePanel,
                     device: torch.device | str = "cpu") -> NetworkInput:
        """The input for every row of ``lognorm`` (cells × ``genes``, log-normalised): the
        panel's columns, in panel order."""
        return cls(sp.csr_matrix(lognorm)[:, panel.columns_in(genes)], panel, device)

    def __len__(self) -> int:
        return self.values.shape[0] if self.rows is None else len(self.rows)

    @property
    def n_genes(self) -> int:
        return self.values.shape[1]

    def __getitem__(self, rows: slice | np.ndarray) -> NetworkInput:
        if not isinstance(rows, (slice, np.ndarray)):
            raise TypeError("index a NetworkInput with a slice or an array of row positions (a view of some "
                            "cells); take() makes rows dense")
        positions = np.arange(len(self))[rows] if self.rows is None else self.rows[rows]
        return NetworkInput(self.values, self.panel, self.device, positions)

    def take(self, index: torch.Tensor | np.ndarray | slice) -> torch.Tensor:
        """Rows ``index`` of this input as a dense float32 tensor on the device."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        positions = index if self.rows is None else self.rows[index]
        dense = self.panel.standardise(self.values[positions].toarray())
        return torch.from_numpy(dense).to(self.device)

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """All rows in order, ``size`` at a time, as dense tensors."""
        for start in range(0, len(self), size):
            yield self.take(slice(start, start + size))

    def dense(self) -> torch.Tensor:
        """Every row as one dense tensor (for small data only: what this class exists to avoid)."""
        return self.take(slice(0, len(self)))
