"""The serving computation as one torch module: what ``model.onnx`` contains.

counts [N, G] and total_counts [N, 1] → normalise to 1e4 → log1p → standardise (clipped) →
SA-CC → encoder → squared distances to the centroids → ``label``, ``prob``, ``latent``,
``distance``. With ``input_kind='lognorm'`` the first two steps are skipped (the values are
already log-normalised) and ``total_counts`` is accepted but not used.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sccsa_infer.bundle import OUTPUT_NAMES

from .genes import GenePanel
from .model import SCCSANet
from .objective import responsibilities
from .preprocess import TARGET_SUM


class ServingGraph(nn.Module):
    """Raw counts → (label, prob, latent, distance), in evaluation mode."""

    output_names = OUTPUT_NAMES

    def __init__(self, net: SCCSANet, panel: GenePanel, input_kind: str, target_sum: float = TARGET_SUM):
        super().__init__()
        self.net = net
        self.normalise = input_kind != "lognorm"
        self.target_sum = float(target_sum)
        self.clip = float(panel.clip)
        self.register_buffer("mean", torch.as_tensor(panel.mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(panel.std, dtype=torch.float32))

    def standardised(self, counts: torch.Tensor, total_counts: torch.Tensor) -> torch.Tensor:
        """The SA-CC input: (log1p(normalised counts) − mean) / std, clipped."""
        total = total_counts.reshape(-1, 1)
        if self.normalise:
            # Scanpy's normalize_total divides by (library size / target_sum) and, like it, an
            # empty cell (library size 0) is divided by 1 and stays all-zero instead of NaN.
            size = torch.where(total > 0, total, torch.ones_like(total)) / self.target_sum
            values = torch.log1p(counts / size)
        else:
            values = counts + 0.0 * total  # keeps the documented input in the graph
        return torch.clamp((values - self.mean) / self.std, -self.clip, self.clip)

    def forward(self, counts: torch.Tensor, total_counts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        latent, _ = self.net.embed(self.standardised(counts, total_counts))
        squared = self.net.squared_distances(latent)
        prob = responsibilities(squared, self.net.beta)
        nearest, label = torch.min(squared, dim=1)
        return label, prob, latent, torch.sqrt(torch.clamp(nearest, min=0.0))

    @torch.no_grad()
    def run(self, counts: np.ndarray, total_counts: np.ndarray) -> dict[str, np.ndarray]:
        """The ONNX Runtime session's ``run`` in torch: numpy in, raw outputs by name out (the runner
        of :class:`sccsa_infer.block.BlockLabeller` for the in-memory model)."""
        outputs = self(torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32)),
                       torch.from_numpy(np.ascontiguousarray(total_counts, dtype=np.float32).reshape(-1, 1)))
        return {name: value.numpy() for name, value in zip(self.output_names, outputs)}
