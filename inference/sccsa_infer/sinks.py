"""Write results block by block, so that memory does not grow with the number of cells.

A sink receives consecutive blocks of results (:class:`~sccsa_infer.prediction.Prediction`) with
their cell names and writes them into a temporary file that :func:`~sccsa_infer.atomic.atomic_output`
renames into place only when every block is written:

- ``.csv`` / ``.tsv``: rows appended per block;
- ``.parquet``: row groups of ~65k rows gathered from the blocks (pyarrow's ``ParquetWriter``);
- ``.h5ad``: the input file copied byte for byte, the new ``obs`` columns and the ``obsm`` entry
  created at full length in the copy with AnnData's encoding, then filled slice by slice; every
  other field of the input survives unchanged.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import write_elem

from .atomic import atomic_output
from .defaults import KEY_ADDED
from .errors import OutputError
from .io import OWN_RESULTS, TABLE_SUFFIXES, CellSource, H5adSource, format_suffix, require_parquet
from .prediction import Prediction

log = logging.getLogger(__name__)

CELL_COLUMN = "cell"


class ResultSink:
    """Receives the results of consecutive blocks of cells; :meth:`finish` completes the file."""

    def write(self, start: int, names: Sequence[str], part: Prediction) -> None:
        raise NotImplementedError

    def finish(self, uns: Mapping[str, Any]) -> None:
        """Complete the file (``uns``: the run record, where the format has room for it)."""

    def close(self) -> None:
        """Release open handles (also after a failure)."""


class CsvSink(ResultSink):
    """A .csv/.tsv table: the header with the first block, then rows per block."""

    def __init__(self, path: Path, sep: str, *, with_latent: bool, key_added: str):
        self.handle = open(path, "w", newline="", encoding="utf-8")
        self.sep, self.with_latent, self.key_added = sep, with_latent, key_added
        self.header = True

    def write(self, start: int, names: Sequence[str], part: Prediction) -> None:
        frame = part.to_frame(pd.Index(names, name=CELL_COLUMN), latent=self.with_latent, key_added=self.key_added)
        frame.to_csv(self.handle, sep=self.sep, header=self.header)
        self.header = False

    def close(self) -> None:
        self.handle.close()


class ParquetSink(ResultSink):
    """A Parquet table written in row groups of about ``ROW_GROUP`` rows (blocks are gathered:
    the file's footer keeps metadata per row group, which must not grow with one entry per block).

    The first block fixes the schema through pandas (so that ``pandas.read_parquet`` gives back
    the table of :meth:`Prediction.to_frame`: the cell index, categorical columns); every block's
    columns then go into Arrow directly, without a DataFrame per block."""

    ROW_GROUP = 65536

    def __init__(self, path: Path, *, with_latent: bool, key_added: str):
        self.path, self.with_latent, self.key_added = path, with_latent, key_added
        self.writer: Any = None
        self.schema: Any = None
        self.pending: list[Any] = []
        self.n_pending = 0

    def write(self, start: int, names: Sequence[str], part: Prediction) -> None:
        import pyarrow as pa

        if self.schema is None:
            frame = part.to_frame(pd.Index(names, name=CELL_COLUMN), latent=self.with_latent, key_added=self.key_added)
            self.schema = pa.Schema.from_pandas(frame)
        columns = part.table_columns(self.key_added, latent=self.with_latent)
        columns[CELL_COLUMN] = np.asarray(names, dtype=object)
        arrays = [_arrow_array(columns[field.name], field.type) for field in self.schema]
        self.pending.append(pa.Table.from_arrays(arrays, schema=self.schema))
        self.n_pending += len(part)
        if self.n_pending >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table, row_group_size=len(table))
        self.pending, self.n_pending = [], 0

    def finish(self, uns: Mapping[str, Any]) -> None:
        self._flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class H5adSink(ResultSink):
    """The input as .h5ad plus the results: obs columns, ``obsm['X_{key}']`` and ``uns[key]``."""

    def __init__(self, path: Path, source: CellSource, *, key_added: str):
        _copy_input(source, path)
        self.file = h5py.File(path, "r+")
        self.n_obs, self.key_added = source.n_obs, key_added
        self.created = False

    def write(self, start: int, names: Sequence[str], part: Prediction) -> None:
        columns, obsm = part.obs_columns(self.key_added), part.obsm(self.key_added)
        if not self.created:
            self._create(columns, obsm)
        stop = start + len(part)
        obs, group = self.file["obs"], self.file["obsm"]
        for key, values in columns.items():
            target = obs[key]["codes"] if isinstance(values, pd.Categorical) else obs[key]
            target[start:stop] = values.codes if isinstance(values, pd.Categorical) else values
        for key, values in obsm.items():
            group[key][start:stop] = values

    def _create(self, columns: Mapping[str, Any], obsm: Mapping[str, np.ndarray]) -> None:
        """Full-length datasets with the attributes AnnData writes for such values."""
        f = self.file
        for name in ("obsm", "uns"):
            if name not in f:
                write_elem(f, name, {})
        obs = f["obs"]
        for key, values in columns.items():
            _create_like(obs, key, values, self.n_obs)
        order = [str(c) for c in np.atleast_1d(obs.attrs.get("column-order", [])) if str(c) not in columns]
        obs.attrs["column-order"] = np.array(order + list(columns), dtype=object)
        for key, values in obsm.items():
            _create_like(f["obsm"], key, values, self.n_obs)
        self.created = True

    def finish(self, uns: Mapping[str, Any]) -> None:
        for key, value in uns.items():
            if key in self.file["uns"]:
                del self.file["uns"][key]
            write_elem(self.file["uns"], key, value)

    def close(self) -> None:
        self.file.close()


def _arrow_array(values: Any, arrow_type: Any) -> Any:
    """One column as an Arrow array of ``arrow_type`` (a categorical as a dictionary array of its
    codes and categories)."""
    import pyarrow as pa

    if isinstance(values, pd.Categorical):
        return pa.DictionaryArray.from_arrays(pa.array(values.codes, type=arrow_type.index_type),
                                              pa.array(values.categories, type=arrow_type.value_type))
    return pa.array(values, type=arrow_type)


def _copy_input(source: CellSource, path: Path) -> None:
    """The input as an .h5ad at ``path``: an .h5ad byte for byte; other formats (read whole by
    their readers, or 10x .h5) converted with their cell and gene names."""
    if isinstance(source, H5adSource):
        shutil.copyfile(source.path, path)
        return
    import anndata

    matrix = sp.vstack([rows for _, _, rows in source.chunks(65536)]).tocsr()
    anndata.AnnData(X=matrix, obs=pd.DataFrame(index=pd.Index(source.obs_names)),
                    var=pd.DataFrame(index=pd.Index(source.var_names))).write_h5ad(path)


def _create_like(group: h5py.Group, key: str, example: Any, n: int) -> None:
    """Create ``group[key]`` for ``n`` rows, encoded as AnnData encodes ``example`` (a block of
    it): AnnData writes the block, and the row-indexed dataset is re-created at full length with
    the same attributes, to be filled slice by slice."""
    if key in group:
        del group[key]
    write_elem(group, key, example)
    dataset_path = f"{key}/codes" if isinstance(example, pd.Categorical) else key
    old = group[dataset_path]
    attrs, dtype, shape = dict(old.attrs), old.dtype, (n, *old.shape[1:])
    del group[dataset_path]
    new = group.create_dataset(dataset_path, shape=shape, dtype=dtype, chunks=(min(n, 65536), *shape[1:]))
    new.attrs.update(attrs)


def check_output_format(out: Path) -> str:
    """The output's format suffix, checked before any work: one sccsa can write, and pyarrow
    present for .parquet."""
    suffix = format_suffix(out)
    if suffix != ".h5ad" and suffix not in TABLE_SUFFIXES:
        raise OutputError(f"Cannot write {out}: the output must end in .h5ad, .csv, .tsv or .parquet.")
    if suffix == ".parquet":
        require_parquet()
    return suffix


@contextmanager
def open_sink(out: Path, source: CellSource, *, with_latent: bool = False, key_added: str = KEY_ADDED,
              overwrite: bool = True) -> Iterator[ResultSink]:
    """A sink writing ``out`` (format by suffix) through a temporary file renamed into place when
    the block completes; on any failure nothing appears. An existing ``out`` is replaced only with
    ``overwrite`` and only if sccsa wrote it."""
    suffix = check_output_format(out)
    with atomic_output(out, overwrite=overwrite, replaceable=OWN_RESULTS) as tmp:
        if suffix == ".h5ad":
            sink: ResultSink = H5adSink(tmp, source, key_added=key_added)
        elif suffix == ".parquet":
            sink = ParquetSink(tmp, with_latent=with_latent, key_added=key_added)
        else:
            sink = CsvSink(tmp, "\t" if suffix == ".tsv" else ",", with_latent=with_latent, key_added=key_added)
        try:
            yield sink
        finally:
            sink.close()
