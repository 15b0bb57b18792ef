"""Batch-shift augmentation: training cells shown with another training batch's shift.

With a batch key the conditional decoder lets the encoder leave the batch out of the latent, but
nothing asks it to: on the Baron human donors a model that never saw a donor placed that donor's
cells off its training donors' centroids (benchmarks/README.md, "Held-out donors"). Here a
training cell is, with probability ``batch_shift``, fed to the network as it would look in another
training batch — its standardised input moved by the difference between the two batches' means
over the cells of its (pseudo-)label — while the decoder, told the cell's own batch, still
reconstructs the cell as measured. The encoder so learns to map a cell to the same place whatever
batch shift it carries, which is what an unseen batch needs. Shifts are estimated within labels so
that a batch's cell-type composition does not pass for a batch effect.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .distributed import SINGLE, Workers
from .network_input import NetworkInput

log = logging.getLogger(__name__)

MIN_GROUP_CELLS = 10  # a batch's mean within a label is used only over at least this many cells
CHUNK = 4096


class BatchShift:
    """The table of shifts S[b, g] = mean of batch b within label g − mean of label g over all
    batches (standardised panel), and the augmentation that draws from it."""

    def __init__(self, shifts: torch.Tensor, usable: torch.Tensor, batches: torch.Tensor, groups: torch.Tensor,
                 probability: float):
        self.shifts = shifts  # [batches, groups, genes]
        self.usable = usable  # [batches, groups] bool: enough cells for a mean
        self.batches, self.groups = batches, groups  # per training row
        self.probability = probability

    @classmethod
    def estimate(cls, x: NetworkInput, batches: np.ndarray, groups: np.ndarray, probability: float,
                 workers: Workers = SINGLE) -> BatchShift:
        """Means per (batch, label) over this rank's rows of ``x``, summed over ranks. ``batches``
        (0..B−1) and ``groups`` (labels 0..G−1; −1: no label, left out) for every row of ``x``."""
        n_batches, n_groups = int(batches.max()) + 1, int(groups.max()) + 1
        cell = batches * n_groups + groups
        sums = torch.zeros(n_batches * n_groups, x.n_genes, dtype=torch.float64)
        counts = torch.zeros(n_batches * n_groups, dtype=torch.float64)
        mine = workers.share(np.arange(len(x)))
        for start in range(0, len(mine), CHUNK):
            rows = mine[start : start + CHUNK]
            keep = groups[rows] >= 0
            codes = torch.from_numpy(cell[rows][keep])
            sums.index_add_(0, codes, x.take(rows[keep]).cpu().double())
            counts.index_add_(0, codes, torch.ones(len(codes), dtype=torch.float64))
        workers.sum(sums)
        workers.sum(counts)
        sums, counts = sums.view(n_batches, n_groups, -1), counts.view(n_batches, n_groups)
        usable = counts >= MIN_GROUP_CELLS
        pooled = sums.sum(0) / counts.sum(0).clamp(min=1).unsqueeze(-1)
        shifts = torch.where(usable.unsqueeze(-1), sums / counts.clamp(min=1).unsqueeze(-1) - pooled, 0.0)
        log.info("batch shifts from %d (batch, label) groups of >= %d cells", int(usable.sum()), MIN_GROUP_CELLS)
        return cls(shifts.float().to(x.device), usable.to(x.device), torch.from_numpy(batches).to(x.device),
                   torch.from_numpy(groups).to(x.device), probability)

    def __call__(self, inputs: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``inputs`` (the standardised rows ``index``) with some rows moved to another batch."""
        own, group = self.batches[index], self.groups[index].clamp(min=0)
        candidates = self.usable[:, group].T.clone()  # [rows, batches]: other batches with a mean for the label
        candidates[torch.arange(len(index)), own] = False
        candidates &= (self.usable[own, group] & (self.groups[index] >= 0)).unsqueeze(1)
        chosen = torch.rand(len(index), generator=generator).to(inputs.device) < self.probability
        chosen &= candidates.any(dim=1)
        if not chosen.any():
            return inputs
        weights = candidates[chosen].float()
        other = torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1).to(inputs.device)
        rows = chosen.nonzero().squeeze(1)
        moved = inputs.clone()
        moved[rows] += self.shifts[other, group[rows]] - self.shifts[own[rows], group[rows]]
        return moved
