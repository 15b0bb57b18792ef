"""Read, verify and write model bundles: the contract between training and serving.

A bundle is a directory (or a ``.zip`` of one) holding ``model.onnx`` (one self-contained
graph), ``bundle.json`` (metadata plus the sha256 of every other file), the joblib gene
selector and the training report. The metadata (without the hashes) is also embedded in the
ONNX ``metadata_props`` under the key :data:`METADATA_KEY`, so a runtime that only has the
``.onnx`` file still knows the genes and the clusters.

Serving never unpickles ``selector.joblib``: everything it needs is in the JSON metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_output
from .errors import BundleError

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
METADATA_FILE = "bundle.json"
SELECTOR_FILE = "selector.joblib"
REPORT_FILE = "report.json"
SELFTEST_FILE = "selftest.npz"
METADATA_KEY = "sccsa"
INPUT_NAMES = ("counts", "total_counts")
OUTPUT_NAMES = ("label", "prob", "latent", "distance")

REQUIRED_KEYS = (
    "schema_version",
    "genes",
    "n_clusters",
    "cluster_names",
    "thresholds",
    "input_kind",
    "latent_dim",
    "target_sum",
    "training",
    "versions",
    "metrics",
)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """The JSON text used wherever metadata is stored (sorted keys, UTF-8)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1)


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified model bundle (the ONNX graph kept as bytes)."""

    source: str
    metadata: dict[str, Any]
    members: dict[str, bytes]

    @property
    def model_bytes(self) -> bytes:
        """The serialized ONNX graph."""
        return self.members[MODEL_FILE]

    @property
    def genes(self) -> list[str]:
        """Gene identifiers, in the order the graph's ``counts`` input expects."""
        return list(self.metadata["genes"])

    @property
    def n_clusters(self) -> int:
        return int(self.metadata["n_clusters"])

    @property
    def cluster_names(self) -> list[str] | None:
        """Cell-type name of each cluster when trained with labels, else ``None``."""
        names = self.metadata.get("cluster_names")
        return None if names is None else [str(n) for n in names]

    @property
    def thresholds(self) -> list[float]:
        """Per-cluster distance beyond which a cell is reported as unassigned."""
        return [float(t) for t in self.metadata["thresholds"]]

    @property
    def input_kind(self) -> str:
        return str(self.metadata["input_kind"])

    @property
    def latent_dim(self) -> int:
        return int(self.metadata["latent_dim"])

    def embedded_metadata(self) -> dict[str, Any]:
        """The metadata as it must appear inside ``model.onnx`` (no file hashes)."""
        return {k: v for k, v in self.metadata.items() if k != "files"}


def _read_members(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = {}
            for info in archive.infolist():
                if info.is_dir():
                    continue
                members[Path(info.filename).name] = archive.read(info)
            return members
    raise BundleError(
        f"{path} is neither a bundle directory nor a .zip bundle. Pass the folder that "
        f"`sccsa-train` wrote (it holds {MODEL_FILE} and {METADATA_FILE})."
    )


def _check_metadata(meta: Any, where: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise BundleError(f"{where}: the metadata is not a JSON object; the bundle is corrupt. Re-export it.")
    version = meta.get("schema_version")
    if not isinstance(version, int):
        raise BundleError(f"{where}: no integer schema_version; this is not an sccsa bundle or it is corrupt.")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{where}: the bundle uses schema version {version}, newer than the {SCHEMA_VERSION} this "
            "sccsa understands. Upgrade sccsa (pip install -U sccsa) or re-export the model with "
            "the sccsa version installed here."
        )
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise BundleError(f"{where}: metadata lacks {', '.join(missing)}; the bundle is corrupt. Re-export it.")
    k = meta["n_clusters"]
    if not isinstance(k, int) or k < 1 or len(meta["thresholds"]) != k:
        raise BundleError(f"{where}: n_clusters and thresholds disagree; the bundle is corrupt. Re-export it.")
    if meta["cluster_names"] is not None and len(meta["cluster_names"]) != k:
        raise BundleError(f"{where}: {len(meta['cluster_names'])} cluster names for {k} clusters; corrupt bundle.")
    if not meta["genes"]:
        raise BundleError(f"{where}: the bundle lists no genes; it is corrupt. Re-export it.")
    return meta


def load_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Load a bundle directory or ``.zip``; with ``verify`` check every file's sha256.

    Raises :class:`BundleError` when files are missing, altered, or of a newer schema.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(
            f"Model bundle {path} does not exist. Pass the folder written by `sccsa-train`, or leave "
            "--model out to use the default model shipped with sccsa."
        )
    members = _read_members(path)
    if METADATA_FILE not in members:
        raise BundleError(f"{path} has no {METADATA_FILE}; it is not an sccsa model bundle (or is incomplete).")
    try:
        meta = json.loads(members[METADATA_FILE].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}/{METADATA_FILE} is not valid JSON ({exc}); the bundle is corrupt.") from None
    meta = _check_metadata(meta, f"{path}/{METADATA_FILE}")
    files = meta.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise BundleError(f"{path}/{METADATA_FILE} lists no file hashes; the bundle is corrupt. Re-export it.")
    if MODEL_FILE not in members:
        raise BundleError(f"{path} has no {MODEL_FILE}; the bundle is incomplete. Copy the whole folder.")
    if verify:
        for name, digest in files.items():
            if name not in members:
                raise BundleError(f"{path}: {name} is listed in {METADATA_FILE} but missing; copy the whole bundle.")
            actual = sha256_bytes(members[name])
            if actual != digest:
                raise BundleError(
                    f"{path}: {name} was altered after export (sha256 {actual[:12]}… but the bundle "
                    f"records {str(digest)[:12]}…). Do not edit bundle files; restore the original "
                    "or re-export the model."
                )
    return Bundle(source=str(path), metadata=meta, members=members)


def write_bundle(
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    files: Mapping[str, bytes],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``files`` plus ``bundle.json`` (``metadata`` + sha256 of each file) atomically.

    ``path`` ending in ``.zip`` gives a single archive, anything else a directory. Nothing is
    left at ``path`` if writing fails. ``files`` must contain ``model.onnx``.
    """
    path = Path(path)
    if MODEL_FILE not in files:
        raise ValueError(f"a bundle needs {MODEL_FILE}")
    meta = dict(metadata)
    meta["files"] = {name: sha256_bytes(data) for name, data in sorted(files.items())}
    _check_metadata(meta, "metadata to write")
    members = dict(files)
    members[METADATA_FILE] = canonical_json(meta).encode("utf-8")
    as_zip = path.suffix == ".zip"
    with atomic_output(path, directory=not as_zip, overwrite=overwrite) as tmp:
        if as_zip:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, data in sorted(members.items()):
                    archive.writestr(name, data)
        else:
            for name, data in members.items():
                (tmp / name).write_bytes(data)
    return path
