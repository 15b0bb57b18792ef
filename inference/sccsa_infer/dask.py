"""Label cells on a Dask cluster: the serving primitive mapped over the row blocks of a lazily
read matrix (``pip install 'sccsa[dask]'``).

AnnData reads ``.h5ad`` and ``.zarr`` matrices lazily as Dask arrays of CSR blocks
(:func:`anndata.experimental.read_elem_lazy`); each worker reads its blocks from the file itself
and runs :class:`~sccsa_infer.block.BlockLabeller` on them, the same call one process makes, so
the results are identical. The labeller (with the verified bundle) is sent to every worker once;
each worker opens one ONNX Runtime session. Results come back to the caller in row order, with
a bounded number of blocks in flight, so the caller's memory does not grow with the file.

>>> from distributed import Client                                    # doctest: +SKIP
>>> import sccsa_infer.dask                                           # doctest: +SKIP
>>> client = Client("tcp://scheduler:8786")                           # doctest: +SKIP
>>> adata = sccsa_infer.dask.read_lazy("atlas.h5ad")                  # doctest: +SKIP
>>> sccsa_infer.dask.annotate(adata, "bundle/", client=client)        # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .block import BlockLabeller
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_MIN_COVERAGE, KEY_ADDED
from .errors import InputDataError, InvalidParameterError, SccsaError
from .prediction import Prediction

log = logging.getLogger(__name__)


def require_dask() -> None:
    """Fail early, with the install line, when Dask's distributed scheduler is not installed."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise SccsaError(
            "Distributed labelling needs Dask: pip install 'sccsa[dask]' (dask[array] and distributed)."
        ) from None


@contextmanager
def connect(scheduler: str, *, threads_per_worker: int = 1) -> Iterator[Any]:
    """A ``distributed.Client`` for ``local:N`` (a LocalCluster of N worker processes on this
    machine, shut down afterwards) or a scheduler address such as ``tcp://host:8786``."""
    require_dask()
    from distributed import Client, LocalCluster

    if scheduler.startswith("local:"):
        try:
            n_workers = int(scheduler.split(":", 1)[1])
        except ValueError:
            n_workers = 0
        if n_workers < 1:
            raise InvalidParameterError(f"--scheduler {scheduler!r}: write local:N with N ≥ 1 worker processes.")
        # the cluster is ours and short-lived: its workers' own log lines (e.g. a heartbeat that timed
        # out on a busy machine, with a traceback) are not the user's concern; a failed task still
        # raises here through the client
        with LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                          dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
            yield client
        return
    if "://" not in scheduler:
        raise InvalidParameterError(
            f"--scheduler {scheduler!r} is neither local:N nor a scheduler address like tcp://host:8786."
        )
    try:
        client = Client(scheduler, timeout="30s")
    except OSError as exc:
        raise SccsaError(f"Cannot reach the Dask scheduler at {scheduler} ({exc}); is it running?") from None
    with client:
        yield client


def lazy_matrix(path: str | Path, *, layer: str | None = None, block_size: int = DEFAULT_BATCH_SIZE) -> Any:
    """X (or ``layers[layer]``) of an ``.h5ad``/``.zarr`` as a Dask array of CSR row blocks of
    ``block_size`` cells, read by the workers themselves."""
    return _lazy_element(_open_store(Path(path)), Path(path), layer, block_size)


def read_lazy(path: str | Path, *, layer: str | None = None, block_size: int = DEFAULT_BATCH_SIZE) -> Any:
    """An AnnData with a lazy X (Dask array of CSR blocks) and ``obs``/``var`` in memory: what
    :func:`annotate` takes. ``layer`` becomes X."""
    import anndata
    from anndata.io import read_elem

    store = _open_store(Path(path))
    return anndata.AnnData(X=_lazy_element(store, Path(path), layer, block_size),
                           obs=read_elem(store["obs"]), var=read_elem(store["var"]))


def _lazy_element(store: Any, path: Path, layer: str | None, block_size: int) -> Any:
    require_dask()
    import anndata

    key = "X" if layer is None else f"layers/{layer}"
    if key not in store:
        raise InputDataError(f"{path} has no {key}; choose the matrix with --layer / layer=.")
    element = store[key]
    if element.attrs.get("encoding-type", "array") == "csc_matrix":
        raise InputDataError(f"{path}: {key} is stored column-wise (CSC) and cannot be read in row blocks; save it as CSR.")
    n_vars = element.attrs["shape"][1] if "shape" in element.attrs else element.shape[1]
    return anndata.experimental.read_elem_lazy(element, chunks=(block_size, int(n_vars)))


def _open_store(path: Path) -> Any:
    if not path.exists():
        raise InputDataError(f"Input {path} does not exist. Check the path.")
    if path.suffix == ".zarr" or path.is_dir():
        import zarr

        return zarr.open(str(path), mode="r")
    import h5py

    return h5py.File(path, "r")


def _label(labeller: BlockLabeller, block: Any, totals: np.ndarray | None, offset: int) -> Prediction:
    return labeller(block, totals, row_offset=offset)


def label_blocks(matrix: Any, labeller: BlockLabeller, *, client: Any = None,
                 total_counts: np.ndarray | None = None, in_flight: int | None = None) -> Iterator[tuple[int, Prediction]]:
    """``(first row, results)`` of every row block of the Dask array ``matrix``, in row order,
    labelled on ``client``'s workers (default: the current client). At most ``in_flight`` blocks
    (default: twice the workers' threads) are pending at a time."""
    require_dask()
    import dask
    from distributed import get_client

    client = client if client is not None else get_client()
    if matrix.numblocks[1] != 1:
        matrix = matrix.rechunk({1: -1})
    sizes = matrix.chunks[0]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    blocks = matrix.to_delayed().ravel()
    remote = client.scatter(labeller, broadcast=True, hash=False)
    window = in_flight or 2 * max(1, sum(client.nthreads().values()))
    label = dask.delayed(_label, pure=False)

    def submit(i: int) -> Any:
        totals = None if total_counts is None else np.asarray(total_counts[starts[i] : starts[i] + sizes[i]])
        return client.compute(label(remote, blocks[i], totals, int(starts[i])))

    pending: deque[Any] = deque()
    submitted = 0
    for i in range(len(blocks)):
        while submitted < len(blocks) and len(pending) < window:
            pending.append(submit(submitted))
            submitted += 1
        yield int(starts[i]), pending.popleft().result()


def annotate(
    adata: Any,
    model: Any = None,
    *,
    client: Any = None,
    key_added: str = KEY_ADDED,
    layer: str | None = None,
    gene_key: str | None = None,
    total_counts_key: str | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> Any:
    """Label an AnnData whose X (or ``layer``) is a Dask array of CSR blocks (see :func:`read_lazy`)
    on a ``dask.distributed`` client, and write the schema of :func:`sccsa_infer.annotate` into it
    (``obs['{key_added}_*']``, ``obsm['X_{key_added}']``, ``uns[key_added]``). Returns ``adata``."""
    from .annotation import record_results
    from .predictor import Predictor

    matrix = adata.X if layer is None else adata.layers[layer]
    if not hasattr(matrix, "to_delayed"):
        raise InputDataError("sccsa_infer.dask.annotate needs a Dask-backed matrix; use sccsa_infer.annotate for "
                             "an AnnData in memory, or sccsa_infer.dask.read_lazy(path) to read one lazily.")
    genes: Sequence[str] = adata.var_names if gene_key is None else adata.var[gene_key]
    predictor = model if isinstance(model, Predictor) else Predictor(model, n_threads=1)
    labeller = predictor.labeller(predictor.align([str(g) for g in genes], min_coverage=min_coverage))
    totals = None if total_counts_key is None else adata.obs[total_counts_key].to_numpy()
    parts = [part for _, part in label_blocks(matrix, labeller, client=client, total_counts=totals)]
    result = Prediction.concat(parts, gene_coverage=labeller.alignment.coverage)
    params = {"key_added": key_added, "layer": layer, "gene_key": gene_key, "total_counts_key": total_counts_key,
              "min_coverage": min_coverage, "engine": "dask"}
    record_results(adata, result, predictor.bundle, key_added, params)
    return adata
