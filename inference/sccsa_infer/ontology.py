"""The Cell Ontology record a bundle may carry for its cell-type names.

A model trained on a labelled reference names its clusters with the reference's labels. When
those labels are Cell Ontology (CL) terms, the bundle's optional ``cell_ontology`` maps each
cluster name to its CL id and to common synonyms (the names other references and annotation
tools use for the same type). ``--eval-key`` then scores a query whose labels are CL ids, CL
names or any of those synonyms without a hand-made ``--label-map``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError, InputDataError

ONTOLOGY_KEY = "cell_ontology"
CL_ID = re.compile(r"^CL:\d{7}$")
UNKNOWN_TERM = "unknown"
"""The term id of a cell whose type is not determined (CELLxGENE's ``cell_type_ontology_term_id``
value for it): an ``unassigned`` cell, or a cluster the record gives no id."""


def check_ontology(record: Any, cluster_names: Sequence[str] | None, where: str,
                   error: type[Exception] = BundleError) -> None:
    """Refuse a ``cell_ontology`` record that does not fit the bundle's cluster names: a mapping
    {cluster name: {"id": "CL:NNNNNNN", "synonyms": [names]}} over names the bundle has, with no
    synonym claimed by two clusters (a query label must translate to one name). ``error``: the
    exception to raise (a bundle being loaded, or a record given to ``export``)."""
    if not isinstance(record, Mapping):
        raise error(f"{where}: cell_ontology must be an object {{cluster name: {{id, synonyms}}}}.")
    if record and not cluster_names:
        raise error(f"{where}: cell_ontology names clusters, but the bundle's clusters have no names.")
    unknown = sorted(set(record) - set(cluster_names or ()))
    if unknown:
        raise error(f"{where}: cell_ontology lists {', '.join(map(repr, unknown[:3]))}, which no cluster is "
                    f"called (clusters: {', '.join(cluster_names or ())}).")
    owner: dict[str, str] = {}
    for name, term in record.items():
        if not isinstance(term, Mapping) or not isinstance(term.get("id"), str) or not CL_ID.match(term["id"]):
            raise error(f"{where}: cell_ontology[{name!r}] needs an 'id' of the form CL:0000236.")
        synonyms = term.get("synonyms", [])
        if not isinstance(synonyms, list) or not all(isinstance(s, str) and s.strip() for s in synonyms):
            raise error(f"{where}: cell_ontology[{name!r}]['synonyms'] must be a list of non-empty names.")
        for text in _spellings(name, term):
            key = _key(text)
            if owner.setdefault(key, name) != name:
                raise error(f"{where}: {text!r} names both {owner[key]!r} and {name!r} in cell_ontology; "
                            "a synonym must belong to one cluster name.")


def read_ontology(path: str | Path) -> dict[str, Any]:
    """A ``cell_ontology`` record from a JSON file (``sccsa-train --cell-ontology``): an object
    {cluster name: {"id": "CL:…", "synonyms": [...]}}; checked against the labels later."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"--cell-ontology {path} cannot be read as JSON ({exc}).") from None
    if not isinstance(record, dict) or not record:
        raise InputDataError(f"--cell-ontology {path} must hold a JSON object "
                             '{"cell type": {"id": "CL:0000236", "synonyms": ["B cells"]}, ...}.')
    return record


def translation(record: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """{lower-cased CL id, name or synonym: the cluster name} for every term of the record."""
    return {_key(text): name for name, term in record.items() for text in _spellings(name, term)}


def to_model_names(labels: Sequence[Any], record: Mapping[str, Mapping[str, Any]] | None) -> np.ndarray:
    """``labels`` (a query's true labels) with every CL id, name or synonym the record knows
    replaced by the model's cluster name; other values (and missing ones) kept as they are."""
    values = np.asarray(labels, dtype=object)
    if not record:
        return values
    table = translation(record)
    return np.asarray([table.get(_key(v), v) if isinstance(v, str) else v for v in values], dtype=object)


def cluster_term_ids(record: Mapping[str, Mapping[str, Any]] | None,
                     cluster_names: Sequence[str] | None) -> list[str] | None:
    """Each cluster's CL id (:data:`UNKNOWN_TERM` for a name the record leaves out), or ``None`` for
    a bundle without a record: what the per-cell ``{key_added}_label_ontology_term_id`` column reads."""
    if not record or cluster_names is None:
        return None
    return [record[name]["id"] if name in record else UNKNOWN_TERM for name in cluster_names]


def _spellings(name: str, term: Mapping[str, Any]) -> tuple[str, ...]:
    """Every way a query may write the cluster ``name``: the name, its CL id and its synonyms."""
    return (name, term["id"], *term.get("synonyms", []))


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()
