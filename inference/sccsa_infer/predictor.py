"""Label cells with a bundle's ONNX graph: one ONNX Runtime session, chunked, thread-safe."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .align import GeneAlignment, align_genes
from .block import BlockLabeller
from .bundle import INPUT_NAMES, METADATA_FILE, METADATA_KEY, OUTPUT_NAMES, Bundle, load_bundle
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_MIN_COVERAGE, GRAPH_ROWS, MODEL_ENV
from .errors import BundleError, InputDataError, InvalidParameterError
from .ontology import cluster_term_ids
from .prediction import Prediction
from .versions import warn_on_version_mismatch

log = logging.getLogger(__name__)


def default_bundle_path() -> Path:
    """The bundle ``sccsa-infer`` uses without ``--model``: ``$SCCSA_MODEL``, else the model
    shipped inside the package (``sccsa_infer/default_model``)."""
    override = os.environ.get(MODEL_ENV)
    if override:
        return Path(override)
    candidate = Path(__file__).resolve().parent / "default_model"
    if (candidate / METADATA_FILE).is_file():
        return candidate
    raise BundleError(
        "No default model is installed with this sccsa; pass --model BUNDLE (or set $"
        + MODEL_ENV
        + ") to a bundle written by `sccsa-train`."
    )


class Predictor:
    """Labels cells with one model bundle.

    The ONNX Runtime session is created once and shared: ``predict`` may be called from
    several threads at the same time. A ``Predictor`` pickles (it carries the verified bundle and
    reopens its session where it is unpickled), so engines such as Dask or a process pool can ship
    it to workers. ``providers`` picks ONNX Runtime execution providers (default: CPU).
    ``spin_wait``: let ONNX Runtime's idle worker threads busy-wait for the next operator (lower
    latency on an otherwise idle machine); by default they sleep, so that on a shared machine
    they do not burn the cores the work needs (benchmarks/results/speed.md, contention).

    >>> predictor = Predictor("my_bundle")            # doctest: +SKIP
    >>> result = predictor.predict(adata)             # doctest: +SKIP
    >>> adata.obs["sccsa_cluster"] = result.obs_columns()["sccsa_cluster"]  # doctest: +SKIP
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str] | Bundle | None = None,
        *,
        n_threads: int | None = None,
        verify: bool = True,
        providers: Sequence[str] | None = None,
        spin_wait: bool = False,
    ):
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(default_bundle_path() if bundle is None else bundle, verify=verify)
        self.bundle = bundle
        self.n_threads = n_threads
        self.spin_wait = spin_wait
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise InvalidParameterError(
                f"ONNX Runtime here has no {', '.join(missing)}; available: {', '.join(ort.get_available_providers())}. "
                "Install the matching onnxruntime build (e.g. onnxruntime-gpu for CUDAExecutionProvider)."
            )
        self.session = self._open_session()
        self._check_contract()
        self.thresholds = np.asarray(bundle.thresholds, dtype=np.float32)
        log.info("loaded model %s: %d genes, K=%d, input %s, ONNX Runtime %s on %s", bundle.source, len(bundle.genes),
                 bundle.n_clusters, bundle.input_kind, ort.__version__, ", ".join(self.providers))
        warn_on_version_mismatch(bundle.metadata.get("versions", {}), bundle.source)

    def _open_session(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        if self.n_threads:
            options.intra_op_num_threads = int(self.n_threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # no memory pattern: ONNX Runtime then plans no one block for every intermediate tensor of a
        # call; 24 MiB less resident end to end at the same CPU (development runs, 1000-gene model)
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin_wait else "0")
        try:
            return ort.InferenceSession(self.bundle.model_bytes, options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises several private exception types
            raise BundleError(f"{self.bundle.source}: model.onnx cannot be loaded by ONNX Runtime ({exc}).") from None

    def __getstate__(self) -> dict[str, Any]:
        """What a pickle carries: the verified bundle and the settings, not the session (ONNX
        Runtime sessions cannot be pickled); a worker that unpickles it opens its own session."""
        return {"bundle": self.bundle, "n_threads": self.n_threads, "providers": self.providers,
                "spin_wait": self.spin_wait}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.bundle, self.n_threads, self.providers = state["bundle"], state["n_threads"], state["providers"]
        self.spin_wait = state.get("spin_wait", False)
        self.session = self._open_session()
        self.thresholds = np.asarray(self.bundle.thresholds, dtype=np.float32)

    def _check_contract(self) -> None:
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise BundleError(f"{self.bundle.source}: model.onnx carries no sccsa metadata; it was not exported by sccsa.")
        if json.loads(meta[METADATA_KEY]) != self.bundle.embedded_metadata():
            raise BundleError(
                f"{self.bundle.source}: bundle.json and the metadata inside model.onnx disagree; "
                "one of them was edited. Restore the original bundle or re-export it."
            )
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != set(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise BundleError(
                f"{self.bundle.source}: model.onnx has inputs {sorted(inputs)} and outputs {outputs}, not the "
                f"sccsa contract {list(INPUT_NAMES)} → {list(OUTPUT_NAMES)}."
            )
        width = inputs["counts"].shape[1]
        if width != len(self.bundle.genes):
            raise BundleError(f"{self.bundle.source}: the graph takes {width} genes but the metadata lists {len(self.bundle.genes)}.")

    @property
    def genes(self) -> list[str]:
        return self.bundle.genes

    def run(self, counts: np.ndarray, total_counts: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on panel-ordered ``counts`` [N, G] and library sizes [N]; raw outputs.
        At most :data:`GRAPH_ROWS` cells go into one ONNX Runtime call, so its buffers stay the
        same size for a block of any size (a Dask block, a ``batch_size``)."""
        counts = np.ascontiguousarray(counts, dtype=np.float32)
        totals = np.ascontiguousarray(np.reshape(total_counts, (-1, 1)), dtype=np.float32)
        parts = [self.session.run(list(OUTPUT_NAMES), {"counts": counts[start : start + GRAPH_ROWS],
                                                       "total_counts": totals[start : start + GRAPH_ROWS]})
                 for start in range(0, max(len(counts), 1), GRAPH_ROWS)]  # bounded ONNX Runtime buffers
        return {name: np.concatenate([part[i] for part in parts]) for i, name in enumerate(OUTPUT_NAMES)}

    def align(self, gene_names: Sequence[str], *, min_coverage: float = DEFAULT_MIN_COVERAGE, source: str = "the query") -> GeneAlignment:
        """Map ``gene_names`` (the query's columns) onto the bundle's gene panel."""
        return align_genes(gene_names, self.genes, min_coverage=min_coverage, source=source)

    def labeller(self, alignment: GeneAlignment) -> BlockLabeller:
        """The serving primitive for a query with this gene ``alignment``: a block of cells in, a block
        of results out (what every path, the Dask engine included, runs per block)."""
        return BlockLabeller(self.run, alignment, self.bundle.input_kind, self.thresholds, self.bundle.cluster_names,
                             cluster_term_ids(self.bundle.cell_ontology, self.bundle.cluster_names))

    def predict(
        self,
        data: Any,
        *,
        gene_names: Sequence[str] | None = None,
        layer: str | None = None,
        gene_key: str | None = None,
        total_counts: np.ndarray | str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        min_coverage: float = DEFAULT_MIN_COVERAGE,
    ) -> Prediction:
        """Label an AnnData (X or ``layer``) or a cells × genes matrix with ``gene_names``.

        Genes are matched by name; missing ones count as zero (with a warning). Library sizes
        are the row sums unless ``total_counts`` gives them (an array, or an obs column name of
        the AnnData) for data that hold only a subset of genes. The input is never modified.
        """
        from .io import matrix_and_genes  # AnnData's I/O stack, only when there is data to read

        matrix, genes = matrix_and_genes(data, gene_names=gene_names, layer=layer, gene_key=gene_key)
        if isinstance(total_counts, str):
            if not hasattr(data, "obs") or total_counts not in data.obs.columns:
                raise InputDataError(f"total_counts {total_counts!r} is not an obs column of the data.")
            total_counts = data.obs[total_counts].to_numpy()
        alignment = self.align(genes, min_coverage=min_coverage)
        return self.labeller(alignment).label(matrix, total_counts=total_counts, batch_size=batch_size)
