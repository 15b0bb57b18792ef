"""The output schema of labelling: per-cell results and the obs/obsm/table columns they become.

One schema for every path: ``sccsa-infer``, :func:`sccsa_infer.annotate`, the Dask engine and the
training half's ``SCCSA.annotate`` all write what :class:`Prediction` says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .defaults import KEY_ADDED
from .ontology import UNKNOWN_TERM

if TYPE_CHECKING:
    import pandas as pd
# pandas is imported where the columns are made, not here: `Predictor(...)` imports this module, and
# a serving process's cold start would pay ~0.3 s for it (speed page, cold start)

UNASSIGNED = "unassigned"
ARRAY_FIELDS: tuple[str, ...] = ("cluster", "confidence", "distance", "unassigned", "latent", "prob", "empty")


@dataclass
class Prediction:
    """Per-cell results: cluster index, optional name, confidence, distance, latent, and ``empty``
    (no counts in the model's genes; such cells are always unassigned). ``term_ids``: each
    cluster's Cell Ontology id, when the bundle carries a ``cell_ontology`` record."""

    cluster: np.ndarray
    confidence: np.ndarray
    distance: np.ndarray
    unassigned: np.ndarray
    latent: np.ndarray
    prob: np.ndarray
    empty: np.ndarray
    cluster_names: list[str] | None = None
    gene_coverage: float | None = None
    term_ids: list[str] | None = None

    @classmethod
    def from_outputs(cls, raw: Mapping[str, np.ndarray], thresholds: np.ndarray, cluster_names: list[str] | None,
                     empty: np.ndarray, term_ids: list[str] | None = None) -> Prediction:
        """Results from the graph's outputs (``label``, ``prob``, ``latent``, ``distance``): the one
        place where confidence and ``unassigned`` are derived, for ONNX Runtime and torch alike.
        ``empty`` marks cells with no counts in the model's genes (always unassigned)."""
        cluster = np.asarray(raw["label"]).astype(np.int64)
        distance = np.asarray(raw["distance"]).astype(np.float32)
        prob = np.asarray(raw["prob"]).astype(np.float32)
        return cls(
            cluster=cluster,
            confidence=prob.max(axis=1),
            distance=distance,
            unassigned=(distance > np.asarray(thresholds, dtype=np.float32)[cluster]) | np.asarray(empty, dtype=bool),
            latent=np.asarray(raw["latent"]).astype(np.float32),
            prob=prob,
            empty=np.asarray(empty, dtype=bool),
            cluster_names=cluster_names,
            term_ids=term_ids,
        )

    @classmethod
    def concat(cls, parts: Sequence[Prediction], gene_coverage: float | None = None) -> Prediction:
        """One result from the results of consecutive blocks, in order."""
        if not parts:
            raise ValueError("no blocks to concatenate")
        fields = {name: np.concatenate([getattr(p, name) for p in parts]) for name in ARRAY_FIELDS}
        return cls(**fields, cluster_names=parts[0].cluster_names, gene_coverage=gene_coverage,
                   term_ids=parts[0].term_ids)

    def __len__(self) -> int:
        return len(self.cluster)

    @property
    def label(self) -> np.ndarray | None:
        """Cell-type name per cell (``'unassigned'`` beyond the threshold), or ``None``."""
        if self.cluster_names is None:
            return None
        names = np.asarray(self.cluster_names, dtype=object)[self.cluster]
        return np.where(self.unassigned, UNASSIGNED, names)

    def obs_columns(self, key_added: str = KEY_ADDED) -> dict[str, Any]:
        """The ``obs`` columns sccsa writes (``{key_added}_cluster``, ``_label`` when the model has
        names, ``_label_ontology_term_id`` when it has their Cell Ontology ids, ``_confidence``,
        ``_distance``, ``_unassigned``): the one output schema of the CLI, :func:`sccsa_infer.annotate`
        and ``SCCSA.annotate``."""
        import pandas as pd

        k = self.prob.shape[1]
        columns: dict[str, Any] = {  # categoricals built from codes: no strings made per cell
            f"{key_added}_cluster": pd.Categorical.from_codes(self.cluster, categories=[str(i) for i in range(k)]),
        }
        if self.cluster_names is not None:
            columns[f"{key_added}_label"] = self._per_cell(self.cluster_names, UNASSIGNED)
        if self.term_ids is not None:  # CELLxGENE's pair of columns: a name and its term id
            columns[f"{key_added}_label_ontology_term_id"] = self._per_cell(self.term_ids, UNKNOWN_TERM)
        columns[f"{key_added}_confidence"] = self.confidence
        columns[f"{key_added}_distance"] = self.distance
        columns[f"{key_added}_unassigned"] = self.unassigned
        return columns

    def _per_cell(self, of_cluster: list[str], unassigned: str) -> pd.Categorical:
        """A categorical of each cell's cluster's value, ``unassigned`` where the cell is: built from
        codes, so no string is made per cell."""
        import pandas as pd

        categories = list(dict.fromkeys([*of_cluster, unassigned]))
        code_of_cluster = np.array([categories.index(value) for value in of_cluster])
        codes = np.where(self.unassigned, categories.index(unassigned), code_of_cluster[self.cluster])
        return pd.Categorical.from_codes(codes, categories=categories)

    def obsm(self, key_added: str = KEY_ADDED) -> dict[str, np.ndarray]:
        """The ``obsm`` entry sccsa writes: the latent coordinates as ``X_{key_added}``."""
        return {f"X_{key_added}": self.latent}

    def table_columns(self, key_added: str = KEY_ADDED, *, latent: bool = False) -> dict[str, Any]:
        """The columns of a results table: the obs columns, plus ``{key_added}_latent_*`` with ``latent``."""
        columns = self.obs_columns(key_added)
        if latent:
            columns.update({f"{key_added}_latent_{j}": self.latent[:, j] for j in range(self.latent.shape[1])})
        return columns

    def to_frame(self, index: Sequence[str] | pd.Index | None = None, *, latent: bool = False,
                 key_added: str = KEY_ADDED) -> pd.DataFrame:
        """A table of :meth:`table_columns`, indexed by ``index`` (e.g. the cell names)."""
        import pandas as pd

        return pd.DataFrame(self.table_columns(key_added, latent=latent), index=None if index is None else pd.Index(index))
