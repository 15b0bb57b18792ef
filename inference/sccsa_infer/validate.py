"""Checks on expression values and gene names, shared by training and serving.

Every check raises :class:`~sccsa_infer.errors.InputDataError` with a message that names
the first offending cell/gene and says how to fix the input.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from .errors import InputDataError, SccsaWarning, shorten

InputKind = Literal["counts", "abundance", "lognorm"]
INPUT_KINDS: tuple[str, ...] = ("counts", "abundance", "lognorm")

_KIND_HINT = (
    "If the raw counts are stored in a layer, select it (--layer counts / layer='counts'); "
    "for data that are not counts say what they are with --input-kind "
    "(abundance for RPKM/FPKM/TPM, lognorm for log1p-normalised values)."
)
# Serving cannot change what a model reads: its input kind was fixed when it was trained.
_SERVING_KIND_HINT = (
    "This model reads {kind}. If the raw counts are stored in a layer, select it (--layer counts / "
    "layer='counts'); otherwise use a model trained on data like these (sccsa-train --input-kind)."
)


def _locate(matrix: np.ndarray | sp.spmatrix, flat_index: int) -> tuple[int, int]:
    """Row and column of the ``flat_index``-th stored value of ``matrix``."""
    if sp.issparse(matrix):
        csr = matrix.tocsr()
        row = int(np.searchsorted(csr.indptr, flat_index, side="right") - 1)
        return row, int(csr.indices[flat_index])
    n_cols = matrix.shape[1]
    return flat_index // n_cols, flat_index % n_cols


def _name(names: Sequence[str] | None, index: int, what: str) -> str:
    if names is None:
        return f"{what} #{index}"
    return f"{what} '{shorten(names[index])}'"


def check_values(
    matrix: np.ndarray | sp.spmatrix,
    input_kind: str = "counts",
    *,
    cell_names: Sequence[str] | None = None,
    gene_names: Sequence[str] | None = None,
    row_offset: int = 0,
    source: str = "the data",
    serving: bool = False,
) -> None:
    """Raise :class:`InputDataError` unless ``matrix`` holds values ``input_kind`` allows.

    All kinds must be finite and non-negative; ``counts`` must also be whole numbers.
    ``row_offset`` is added to reported row numbers when ``matrix`` is a chunk of a file.
    ``serving``: the data go into a trained model, so the hint names fixes that exist there.
    """
    hint = _SERVING_KIND_HINT.format(kind={"counts": "raw counts", "abundance": "RPKM/FPKM/TPM values",
                                           "lognorm": "log1p-normalised values"}.get(input_kind, input_kind)) \
        if serving else _KIND_HINT
    if input_kind not in INPUT_KINDS:
        raise InputDataError(
            f"Unknown input kind {input_kind!r}; use one of {', '.join(INPUT_KINDS)}."
        )
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    if values.size == 0:
        return

    def where(flat: int) -> str:
        row, col = _locate(matrix, flat)
        cell = _name(cell_names, row, "cell") if cell_names is not None else f"cell #{row + row_offset}"
        return f"{cell}, {_name(gene_names, col, 'gene')}"

    bad, first = _flagged(values, lambda chunk: ~np.isfinite(chunk))
    if bad:
        raise InputDataError(
            f"{source} contains {bad} NaN or infinite value(s) (first at {where(first)}). "
            "sccsa needs finite expression values: remove or impute those entries "
            "(e.g. replace NaN by 0 if it means 'not detected') and try again."
        )
    negative, first = _flagged(values, lambda chunk: chunk < 0)
    if negative:
        raise InputDataError(
            f"{source} contains {negative} negative value(s) "
            f"(first: {values[first]:g} at {where(first)}). Expression must be non-negative: "
            "scaled or centred data (e.g. after scanpy.pp.scale) cannot be used. " + hint
        )
    if input_kind == "counts":
        fractional, first = _flagged(values, lambda chunk: chunk != np.floor(chunk))
        if fractional:
            raise InputDataError(
                f"{source} is not raw counts: {fractional} value(s) are not whole numbers "
                f"(first: {values[first]:g} at {where(first)}). " + hint
            )


CHECK_CHUNK = 1 << 22  # values per pass of a check, so its temporaries stay small whatever the data's size


def _flagged(values: np.ndarray, test: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int]:
    """How many of ``values`` ``test`` flags, and the position of the first (−1 if none), a chunk at
    a time: over a million cells' counts the boolean and float temporaries of one pass over all
    values were a gigabyte."""
    count, first = 0, -1
    for offset in range(0, values.size, CHECK_CHUNK):
        flags = test(values[offset : offset + CHECK_CHUNK])
        found = int(np.count_nonzero(flags))
        if found and first < 0:
            first = offset + int(np.argmax(flags))
        count += found
    return count, first


_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*\d{6,})\.\d+$", re.IGNORECASE)


def normalise_gene_name(name: str) -> str:
    """Key used to match gene names: trimmed, upper case, Ensembl version suffix removed."""
    key = str(name).strip()
    match = _ENSEMBL_VERSION.match(key)
    if match:
        key = match.group(1)
    return key.upper()


def check_gene_names(
    names: Sequence[str], *, source: str = "the data", relevant: set[str] | None = None
) -> None:
    """Raise :class:`InputDataError` for empty, numbers-only or duplicated gene names.

    With ``relevant`` (normalised names), only duplicates among those genes are an error.
    """
    names = [str(n) for n in names]
    if not names:
        raise InputDataError(f"{source} has no genes (zero columns); nothing can be labelled.")
    if all(n.strip().lstrip("-").replace(".", "", 1).isdigit() for n in names):
        raise InputDataError(
            f"The gene names of {source} are numbers only ({', '.join(shorten(n) for n in names[:3])}, ...): the real "
            "gene identifiers were lost. Put gene symbols or Ensembl ids in var_names, or name the "
            "var column that holds them with --gene-key / gene_key=."
        )
    empty = [i for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise InputDataError(
            f"{source} has {len(empty)} empty gene name(s) (first at column {empty[0]}). "
            "Give every gene a name, or choose another var column with --gene-key."
        )
    counts = Counter(normalise_gene_name(n) for n in names)
    duplicated = sorted(k for k, c in counts.items() if c > 1 and (relevant is None or k in relevant))
    if duplicated:
        shown = ", ".join(shorten(d) for d in duplicated[:5]) + (" ..." if len(duplicated) > 5 else "")
        raise InputDataError(
            f"{source} has {len(duplicated)} duplicated gene name(s) (compared case-insensitively, "
            f"Ensembl versions ignored): {shown}. sccsa matches genes case-insensitively, so names that "
            "differ only in case collide. Keep one of each (e.g. the first: "
            "`from sccsa_infer.validate import normalise_gene_name; "
            "adata = adata[:, ~adata.var_names.map(normalise_gene_name).duplicated()].copy()`), sum them, "
            "or pick a var column of unique ids with --gene-key."
        )


def check_library_sizes(totals: Sequence[float] | np.ndarray, row_sums: np.ndarray, key: str) -> np.ndarray:
    """Validate library sizes taken from ``obs[key]``: numeric, finite, and at least the sum of
    the counts present (they cover all genes, the matrix only some). Returns float64."""
    try:
        values = np.asarray(totals, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputDataError(f"obs[{key!r}] must hold numbers (each cell's total counts over all genes).") from None
    if not np.all(np.isfinite(values)):
        raise InputDataError(f"obs[{key!r}] has missing or infinite library sizes; fill them or drop those cells.")
    short = values < row_sums - 1e-3 * np.maximum(row_sums, 1.0)
    if short.any():
        first = int(np.argmax(short))
        raise InputDataError(
            f"obs[{key!r}] is smaller than the counts present for {int(short.sum())} cell(s) (first: cell #{first}, "
            f"{values[first]:g} < {row_sums[first]:g}). It must be each cell's total over ALL genes; "
            "leave the option out to use the row sums."
        )
    return values


class DuplicateNames:
    """Repeated cell names in a stream of blocks, in constant memory.

    Each name's 64-bit hash sets ``N_PROBES`` bits of a fixed bitmap (a Bloom filter, 16 MiB); a
    name whose bits were all set already is a candidate repeat. Bloom filters have no false
    negatives, so without candidates no name repeats, whatever the number of cells. Candidates
    (true repeats, and at 5 M distinct names about 0.1 % false ones) are confirmed by
    :meth:`confirm`, a second pass over the names that counts only the candidates' hashes.
    """

    BITS = 1 << 27
    N_PROBES = 3

    def __init__(self) -> None:
        self._bitmap = np.zeros(self.BITS // 8, dtype=np.uint8)
        self._candidates: set[int] = set()

    @staticmethod
    def hashes(names: Sequence[str] | np.ndarray) -> np.ndarray:
        import pandas as pd

        values = np.asarray(names, dtype=object)
        if pd.api.types.infer_dtype(values, skipna=False) != "string":  # e.g. integer names: hash their text
            values = values.astype(str).astype(object)
        # Python's own string hash (SipHash, cached on each str): the filter lives in one process,
        # so that hashes differ between processes does not matter; 4× cheaper than pandas' hash_array
        return np.fromiter(map(hash, values), dtype=np.int64, count=len(values)).view(np.uint64)

    def _probes(self, hashes: np.ndarray) -> np.ndarray:
        """Bit positions [n, N_PROBES] of each hash (double hashing on its two 32-bit halves)."""
        low, high = hashes & np.uint64(0xFFFFFFFF), hashes >> np.uint64(32)
        steps = np.arange(self.N_PROBES, dtype=np.uint64)
        return ((low[:, None] + steps[None, :] * (high[:, None] | np.uint64(1))) % np.uint64(self.BITS)).astype(np.int64)

    def add(self, names: Sequence[str] | np.ndarray) -> None:
        hashes = self.hashes(names)
        unique, counts = np.unique(hashes, return_counts=True)
        self._candidates.update(int(h) for h in unique[counts > 1])  # repeats inside the block
        probes = self._probes(unique)
        seen = np.all(self._bitmap[probes >> 3] & (1 << (probes & 7)).astype(np.uint8), axis=1)
        self._candidates.update(int(h) for h in unique[seen])
        np.bitwise_or.at(self._bitmap, (probes >> 3).ravel(), (1 << (probes & 7)).astype(np.uint8).ravel())

    @property
    def may_repeat(self) -> bool:
        """False when no name repeats (certain); True when :meth:`confirm` must look."""
        return bool(self._candidates)

    def confirm(self, blocks: Iterable[Sequence[str] | np.ndarray]) -> tuple[int, str | None]:
        """Number of distinct repeated names and one of them, from a second pass over all names."""
        counts: dict[int, int] = {}
        examples: dict[int, str] = {}
        for names in blocks:
            for name, value in zip(names, self.hashes(names).tolist()):
                if value in self._candidates:
                    counts[value] = counts.get(value, 0) + 1
                    examples.setdefault(value, str(name))
        repeated = [value for value, count in counts.items() if count > 1]
        return len(repeated), (examples[repeated[0]] if repeated else None)


def warn_duplicate_cells(cell_names: Sequence[str], source: str) -> None:
    """Warn when cell names repeat: results keyed by cell name would be ambiguous."""
    tally = DuplicateNames()
    tally.add(cell_names)
    if tally.may_repeat:
        n_repeated, example = tally.confirm([cell_names])
        if n_repeated:
            warn_repeated_names(n_repeated, example or "?", source)


def warn_repeated_names(n_repeated: int, example: str, source: str) -> None:
    """The duplicated-cell-names warning (``example``: one of the repeated names)."""
    warnings.warn(
        f"{source} has {n_repeated} duplicated cell name(s) (e.g. {shorten(example)!r}); results are "
        "written in row order, but tables keyed by cell name will be ambiguous. Make them unique "
        "(adata.obs_names_make_unique()).",
        SccsaWarning,
        stacklevel=3,
    )


def check_block(
    block: np.ndarray | sp.csr_matrix,
    panel: np.ndarray | sp.csr_matrix,
    totals: np.ndarray,
    input_kind: str,
    *,
    panel_genes: Sequence[str],
    row_offset: int = 0,
    source: str = "the data",
) -> None:
    """The serving checks of one block, paid mostly on the model's genes.

    Every gene enters the library sizes, so the whole block is scanned only for what would corrupt
    them (one minimum and the row sums already computed: NaN, infinite or negative values); the
    stricter test of the input kind (whole numbers for counts) runs on the ``panel`` columns the
    model reads (their stored values only, when ``panel`` is sparse). On a failure the full
    :func:`check_values` names the first offending value.
    """
    values = block.data if sp.issparse(block) else block
    if values.size and (not np.all(np.isfinite(totals)) or values.min() < 0):
        check_values(block, input_kind, row_offset=row_offset, source=source, serving=True)
    check_values(panel, input_kind, gene_names=panel_genes, row_offset=row_offset, source=source, serving=True)


def obs_column(obs: Any, key: str, option: str) -> Any:
    """``obs[key]`` (a pandas Series), or an error naming ``option`` and the columns there are."""
    if key not in obs.columns:
        raise InputDataError(
            f"{option} {key!r} is not an obs column; available: {', '.join(map(str, obs.columns)) or '(none)'}.")
    return obs[key]


def complete_obs_strings(obs: Any, key: str, option: str, rows: np.ndarray, fix: str) -> np.ndarray:
    """``obs[key]`` at ``rows`` as strings; missing values are refused (``fix`` says what to do),
    since a cell without a label or batch cannot be placed."""
    column = obs_column(obs, key, option).iloc[rows]
    if column.isna().any():
        raise InputDataError(f"obs[{key!r}] has {int(column.isna().sum())} missing value(s); {fix}")
    return column.astype(str).to_numpy()
