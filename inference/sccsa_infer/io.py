"""Read cells in chunks from .h5ad / 10x .h5 / .mtx / .csv, and recognise the result files sccsa wrote.

``.h5ad`` and 10x ``.h5`` are streamed: only one chunk of cells is in memory at a time
(AnnData's backed sparse datasets), so files larger than RAM can be labelled. ``.csv`` and
``.mtx`` are text formats that are read whole.
"""

from __future__ import annotations

import gzip
import logging
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
from anndata.io import read_elem, sparse_dataset

from .atomic import ReplaceRule
from .errors import InputDataError, OutputError, SccsaWarning, shorten

log = logging.getLogger(__name__)

READABLE_SUFFIXES = (".h5ad", ".h5", ".csv", ".tsv", ".csv.gz", ".tsv.gz", ".mtx", ".mtx.gz")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


def format_suffix(path: Path) -> str:
    """The format-defining ending of ``path`` (e.g. '.csv.gz'), lower case."""
    name = path.name.lower()
    for suffix in sorted(READABLE_SUFFIXES + TABLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


class CellSource:
    """Cells × genes read in row chunks; subclasses fill the fields, ``matrix`` with anything that
    a row slice reads (an in-memory matrix, or a :class:`CSRGroup` in the file)."""

    path: Path
    matrix: Any
    n_obs: int
    var_names: list[str]
    obs_names: pd.Index

    def chunks(self, size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        """Yield ``(start, stop, matrix)`` with ``matrix`` a float32 CSR of rows start:stop."""
        if size < 1:
            raise ValueError("chunk size must be positive")
        for start in range(0, self.n_obs, size):
            stop = min(start + size, self.n_obs)
            try:
                rows = self._rows(start, stop)
            except (OSError, KeyError, ValueError) as exc:
                raise InputDataError(
                    f"Could not read cells {start}-{stop} of {self.path} ({exc}); the file is truncated "
                    "or corrupt. Re-create or re-download it."
                ) from None
            yield start, stop, sp.csr_matrix(rows, dtype=np.float32)

    def _rows(self, start: int, stop: int) -> Any:
        return self.matrix[start:stop]

    def names(self, start: int, stop: int) -> np.ndarray:
        """The names of cells start:stop (read per block where the format allows)."""
        return np.asarray(self.obs_names[start:stop], dtype=object)

    def obs_column(self, key: str) -> pd.Series:
        """A per-cell annotation (e.g. true labels for evaluation)."""
        raise InputDataError(f"{self.path} carries no cell annotations, so obs column {key!r} is unavailable.")

    def close(self) -> None:
        """Release the open file, if any."""

    def __enter__(self) -> CellSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputDataError(
            f"{path} is not a readable HDF5 file ({exc}). It may be truncated, still being written, or "
            "not an .h5ad/.h5 file at all; check the path and re-create the file."
        ) from None


def _gene_names_from_var(var: pd.DataFrame, gene_key: str | None, path: Path) -> list[str]:
    if gene_key is None:
        return [str(g) for g in var.index]
    if gene_key not in var.columns:
        raise InputDataError(
            f"--gene-key {gene_key!r} is not a var column of {path}; available: "
            f"{', '.join(map(str, var.columns)) or '(none)'}."
        )
    return [str(g) for g in var[gene_key].astype(str)]


class CSRGroup:
    """A CSR matrix stored as an HDF5 group (``data``, ``indices``, ``indptr``: AnnData's and
    Cell Ranger's encoding), read a block of rows at a time: ``indptr`` is read per block, not
    cached whole (8 bytes a cell would make memory grow with the file). AnnData's backed
    ``sparse_dataset`` reads the same rows but looks up scipy's installed version on every
    block (anndata 0.12 with scipy ≥ 1.17), ~7 ms each, a tenth of the labelling time."""

    def __init__(self, group: h5py.Group, shape: tuple[int, int]):
        self.shape = shape
        # the three datasets opened once: looking a name up in the group costs more than a block's read
        self.data, self.indices, self.indptr = group["data"], group["indices"], group["indptr"]

    def __getitem__(self, rows: slice) -> sp.csr_matrix:
        start, stop, _ = rows.indices(self.shape[0])
        indptr = self.indptr[start : stop + 1]
        lo, hi = int(indptr[0]), int(indptr[-1])
        return sp.csr_matrix((self.data[lo:hi], self.indices[lo:hi], indptr - lo), shape=(stop - start, self.shape[1]))


class H5adSource(CellSource):
    """An ``.h5ad`` file read in backed mode (X or a layer)."""

    def __init__(self, path: Path, *, layer: str | None = None, gene_key: str | None = None):
        self.path = path
        self.file = _open_h5(path)
        try:
            self._init(layer, gene_key)
        except BaseException:
            self.file.close()
            raise

    def _init(self, layer: str | None, gene_key: str | None) -> None:
        f = self.file
        if "obs" not in f or "var" not in f:
            raise InputDataError(f"{self.path} is an HDF5 file but not an AnnData .h5ad (no obs/var).")
        if layer is None:
            if "X" not in f:
                raise InputDataError(f"{self.path} has no X matrix; name the layer to use with --layer.")
            element = f["X"]
            self.source_name = "X"
        else:
            layers = f.get("layers")
            if layers is None or layer not in layers:
                available = ", ".join(layers.keys()) if layers is not None else ""
                raise InputDataError(
                    f"Layer {layer!r} is not in {self.path}; available layers: {available or '(none)'}. "
                    "Leave --layer out to use X."
                )
            element = layers[layer]
            self.source_name = f"layers['{layer}']"
        self.var = read_elem(f["var"])
        self.var_names = _gene_names_from_var(self.var, gene_key, self.path)
        self._index = f["obs"][f["obs"].attrs.get("_index", "_index")]
        if isinstance(element, h5py.Dataset):
            self.matrix = element
            shape = element.shape
        else:
            encoding = element.attrs.get("encoding-type", "")
            if encoding not in ("csr_matrix", "csc_matrix"):
                raise InputDataError(f"{self.path}: {self.source_name} has unsupported encoding {encoding!r}.")
            backed = sparse_dataset(element)
            shape = backed.shape
            if encoding == "csc_matrix":
                warnings.warn(
                    f"{self.path}: {self.source_name} is stored column-wise (CSC), which cannot be read "
                    "cell by cell; loading it whole. Save it as CSR to stream large files.",
                    SccsaWarning,
                    stacklevel=3,
                )
                self.matrix = backed.to_memory().tocsr()
            else:
                self.matrix = CSRGroup(element, shape)
        self.n_obs = int(shape[0])
        if shape[1] != len(self.var_names):
            raise InputDataError(f"{self.path}: {self.source_name} has {shape[1]} columns but var has {len(self.var_names)}.")

    def names(self, start: int, stop: int) -> np.ndarray:
        """Cell names start:stop read from the file, so that no list of all names is held."""
        values = self._index[start:stop]
        if values.dtype.kind in "OS":
            return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)
        return values.astype(str).astype(object)

    @property
    def obs_names(self) -> pd.Index:  # type: ignore[override]
        """All cell names (read whole: only for the in-memory paths)."""
        return pd.Index(self.names(0, self.n_obs))

    def obs_column(self, key: str) -> pd.Series:
        obs_group = self.file["obs"]
        if key not in obs_group:
            available = [k for k in obs_group.keys() if k != obs_group.attrs.get("_index", "_index")]
            raise InputDataError(f"obs column {key!r} is not in {self.path}; available: {', '.join(available) or '(none)'}.")
        return pd.Series(np.asarray(read_elem(obs_group[key])), index=self.obs_names, name=key)

    def close(self) -> None:
        self.file.close()


class TenxH5Source(CellSource):
    """A Cell Ranger ``.h5`` matrix (v3 ``matrix/`` or v2 per-genome group), streamed by cell."""

    def __init__(self, path: Path, *, gene_key: str | None = None):
        self.path = path
        self.file = _open_h5(path)
        groups = [k for k in self.file.keys() if isinstance(self.file[k], h5py.Group)]
        if "matrix" in self.file:
            g = self.file["matrix"]
            names = g["features/name"][:]
            ids = g["features/id"][:]
        elif len(groups) == 1 and "genes" in self.file[groups[0]]:
            g = self.file[groups[0]]
            names = g["gene_names"][:]
            ids = g["genes"][:]
        else:
            self.file.close()
            raise InputDataError(f"{path} is an HDF5 file but neither an .h5ad nor a 10x Genomics matrix.")
        decode = np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b), otypes=[object])
        by_key = {None: decode(names), "gene_symbols": decode(names), "gene_ids": decode(ids)}
        if gene_key not in by_key:
            self.file.close()
            raise InputDataError(f"--gene-key for a 10x .h5 must be gene_ids or gene_symbols, not {gene_key!r}.")
        self.var_names = [str(v) for v in by_key[gene_key]]
        self.obs_names = pd.Index(decode(g["barcodes"][:]).astype(str))
        self.n_obs = int(g["indptr"].shape[0]) - 1
        self.matrix = CSRGroup(g, (self.n_obs, len(self.var_names)))

    def close(self) -> None:
        self.file.close()


class InMemorySource(CellSource):
    """A whole matrix already in memory (text formats, or an AnnData from the Python API)."""

    def __init__(self, path: Path, matrix: Any, var_names: list[str], obs: pd.DataFrame):
        self.path = path
        self.matrix = sp.csr_matrix(matrix) if sp.issparse(matrix) else np.asarray(matrix)
        self.var_names = var_names
        self.obs = obs
        self.obs_names = pd.Index(obs.index.astype(str))
        self.n_obs = self.matrix.shape[0]

    def obs_column(self, key: str) -> pd.Series:
        if key not in self.obs.columns:
            raise InputDataError(f"obs column {key!r} is not available; present: {', '.join(self.obs.columns) or '(none)'}.")
        return self.obs[key]


def _read_csv(path: Path, gene_key: str | None) -> InMemorySource:
    if gene_key is not None:
        raise InputDataError("--gene-key does not apply to CSV input: genes are the header row.")
    sep = "\t" if ".tsv" in path.name.lower() else ","
    try:
        frame = pd.read_csv(path, sep=sep, index_col=0)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputDataError(f"{path} is not a readable {sep!r}-separated table ({exc}).") from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise InputDataError(f"{path} is truncated or not a valid compressed table ({exc}); re-create or re-download it.") from None
    if frame.shape[0] == 0:
        raise InputDataError(f"{path} has a header but no cell rows; nothing to label.")
    non_numeric = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise InputDataError(
            f"{path}: columns {', '.join(shorten(c) for c in non_numeric[:5])} are not numeric. The table must have cells "
            "as rows, cell ids in the first column and one numeric column per gene."
        )
    return InMemorySource(path, frame.to_numpy(dtype=np.float32), [str(c) for c in frame.columns], pd.DataFrame(index=frame.index.astype(str)))


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError, OSError) as exc:
        raise InputDataError(f"{path} is truncated or unreadable ({exc}); re-create or re-download it.") from None


def _read_mtx(path: Path, gene_key: str | None) -> InMemorySource:
    folder = path if path.is_dir() else path.parent
    mtx = path if path.is_file() else next((folder / n for n in ("matrix.mtx.gz", "matrix.mtx") if (folder / n).exists()), None)
    features = next((folder / n for n in ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv") if (folder / n).exists()), None)
    barcodes = next((folder / n for n in ("barcodes.tsv.gz", "barcodes.tsv") if (folder / n).exists()), None)
    if mtx is None or features is None or barcodes is None:
        raise InputDataError(
            f"{path}: a Matrix Market input needs matrix.mtx(.gz), features.tsv(.gz) (or genes.tsv) and "
            "barcodes.tsv(.gz) in one folder, as Cell Ranger writes them."
        )
    columns = [line.split("\t") for line in _read_lines(features)]
    column = {None: 1, "gene_symbols": 1, "gene_ids": 0}.get(gene_key)
    if column is None:
        raise InputDataError(f"--gene-key for .mtx input must be gene_ids or gene_symbols, not {gene_key!r}.")
    genes = [c[min(column, len(c) - 1)] for c in columns]
    cells = [line.split("\t")[0] for line in _read_lines(barcodes)]
    try:
        matrix = sp.csr_matrix(scipy.io.mmread(str(mtx)).T, dtype=np.float32)
    except (ValueError, IndexError, EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise InputDataError(
            f"{mtx} is not a readable Matrix Market file ({exc}); it is truncated or corrupt. Re-create or "
            "re-download it."
        ) from None
    if matrix.shape != (len(cells), len(genes)):
        raise InputDataError(
            f"{mtx} is {matrix.shape[1]} genes × {matrix.shape[0]} cells but lists {len(genes)} genes and "
            f"{len(cells)} barcodes; the three files do not belong together."
        )
    return InMemorySource(path, matrix, genes, pd.DataFrame(index=cells))


def open_cells(path: str | Path, *, layer: str | None = None, gene_key: str | None = None) -> CellSource:
    """Open ``path`` for chunked reading; the format follows the file name."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"Input {path} does not exist. Check the path.")
    suffix = format_suffix(path)
    if path.is_dir() and suffix in READABLE_SUFFIXES:
        raise InputDataError(
            f"{path} is a folder, not a {suffix} file. Pass the file itself (or, for a Matrix Market folder, a "
            "folder without a file extension in its name)."
        )
    if path.is_dir() or suffix in (".mtx", ".mtx.gz"):
        source: CellSource = _read_mtx(path, gene_key)
    elif suffix in (".csv", ".tsv", ".csv.gz", ".tsv.gz"):
        source = _read_csv(path, gene_key)
    elif suffix in (".h5ad", ".h5"):
        with _open_h5(path) as probe:
            is_anndata = "obs" in probe and "var" in probe
        if is_anndata:
            source = H5adSource(path, layer=layer, gene_key=gene_key)
        else:
            source = TenxH5Source(path, gene_key=gene_key)
    else:
        raise InputDataError(
            f"Cannot read {path}: unknown format {suffix or '(no extension)'}. Use .h5ad, a 10x .h5, "
            ".mtx (with features/barcodes), or a .csv/.tsv table of cells × genes."
        )
    if layer is not None and not isinstance(source, H5adSource):
        source.close()
        raise InputDataError("--layer applies to .h5ad input only.")
    if source.n_obs == 0:
        source.close()
        raise InputDataError(f"{path} contains zero cells; nothing to label.")
    log.debug("opened %s: %d cells × %d genes (%s)", path, source.n_obs, len(source.var_names), type(source).__name__)
    return source


def matrix_and_genes(
    data: Any, *, gene_names: Sequence[str] | None = None, layer: str | None = None, gene_key: str | None = None
) -> tuple[np.ndarray | sp.csr_matrix, list[str]]:
    """The expression matrix (X or ``layer``) and gene names of an in-memory AnnData, or a bare
    cells × genes matrix with ``gene_names``. Nothing is copied or modified."""
    if hasattr(data, "obs") and hasattr(data, "var"):  # AnnData, without importing it here
        if layer is not None:
            if layer not in data.layers:
                raise InputDataError(f"Layer {layer!r} is not in the AnnData; available: {', '.join(data.layers) or '(none)'}.")
            matrix = data.layers[layer]
        else:
            matrix = data.X
        if gene_key is not None:
            if gene_key not in data.var.columns:
                raise InputDataError(f"gene_key {gene_key!r} is not a var column; available: {', '.join(data.var.columns)}.")
            genes = [str(g) for g in data.var[gene_key]]
        else:
            genes = [str(g) for g in data.var_names]
    else:
        if gene_names is None:
            raise InputDataError("A bare matrix needs gene_names= (one name per column) to be aligned to the model.")
        matrix, genes = data, [str(g) for g in gene_names]
    if matrix is None:
        raise InputDataError("The AnnData has no X matrix; pass layer= to choose one.")
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)
    elif hasattr(matrix, "to_memory"):  # backed sparse dataset
        matrix = sp.csr_matrix(matrix.to_memory())
    else:
        matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] != len(genes):
        raise InputDataError(f"The matrix is {matrix.shape} but {len(genes)} gene names were given.")
    return matrix, genes


def read_h5ad(path: str | Path) -> Any:
    """Load a whole ``.h5ad`` into memory, turning file problems into :class:`InputDataError`."""
    import anndata

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"Input {path} does not exist. Check the path.")
    if format_suffix(path) != ".h5ad":
        raise InputDataError(f"{path} is not an .h5ad file; convert it to AnnData first (e.g. scanpy.read_10x_h5(...).write_h5ad(...)).")
    with _open_h5(path) as probe:
        if "obs" not in probe or "var" not in probe:
            raise InputDataError(f"{path} is an HDF5 file but not an AnnData .h5ad (no obs/var).")
    try:
        return anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputDataError(f"{path} could not be read as AnnData ({exc}); it is truncated or corrupt. Re-create it.") from None


OUTPUT_MARK = "sccsa_cluster"


def is_sccsa_output(path: Path) -> bool:
    """True when ``path`` is a result file that sccsa wrote (the only kind ``--out`` replaces):
    an .h5ad with ``uns['sccsa']`` or ``obs['sccsa_cluster']``, or a table with that column."""
    suffix = format_suffix(path)
    try:
        if suffix == ".h5ad":
            with h5py.File(path, "r") as f:
                return "uns/sccsa" in f or f"obs/{OUTPUT_MARK}" in f
        if suffix in (".csv", ".tsv"):
            with open(path, "rb") as handle:
                header = handle.readline(2**20).decode("utf-8", "replace").rstrip("\r\n")
            return OUTPUT_MARK in header.split("\t" if suffix == ".tsv" else ",")
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return OUTPUT_MARK in pq.read_schema(path).names
    except Exception:  # noqa: BLE001 - unreadable as our format means: not ours
        return False
    return False


OWN_RESULTS = ReplaceRule(is_sccsa_output, "a result file that sccsa wrote")
"""What ``--out`` / ``--write-adata`` may replace."""


def require_parquet() -> None:
    """Fail before any work when .parquet output is asked for but pyarrow is not installed."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise OutputError(
            "Writing .parquet needs pyarrow, which the base install leaves out: pip install 'sccsa[parquet]' "
            "(or write .csv/.tsv/.h5ad)."
        ) from None
