"""Read, verify and write model bundles: the contract between training and serving.

A bundle is a directory (or a ``.zip`` of one) holding ``model.onnx`` (one self-contained
graph), ``bundle.json`` (metadata plus the sha256 of every other file), the joblib gene
selector and the training report. The metadata (without the hashes) is also embedded in the
ONNX ``metadata_props`` under the key :data:`METADATA_KEY`, so a runtime that only has the
``.onnx`` file still knows the genes and the clusters.

Serving never unpickles ``selector.joblib``: everything it needs is in the JSON metadata.
"""

from __future__ import annotations

import logging
import hashlib
import json
import os
import stat
import time
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .atomic import ReplaceRule, atomic_output, is_empty_folder
from .errors import BundleError, SccsaWarning
from .ontology import ONTOLOGY_KEY, check_ontology

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
METADATA_FILE = "bundle.json"
SELECTOR_FILE = "selector.joblib"
REPORT_FILE = "report.json"
SELFTEST_FILE = "selftest.npz"
METADATA_KEY = "sccsa"
INPUT_NAMES = ("counts", "total_counts")
OUTPUT_NAMES = ("label", "prob", "latent", "distance")
# Bounds on what loading a bundle may read: far above any real bundle, far below a machine's memory.
MAX_METADATA_BYTES = 64 * 2**20
MAX_MODEL_BYTES = 2 * 2**30  # protobuf's own limit for one ONNX file
MAX_MEMBER_BYTES = 256 * 2**20
MAX_MEMBERS = 32
LOAD_ATTEMPTS = 5
_CHUNK = 2**20

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
    def cell_ontology(self) -> dict[str, dict[str, Any]] | None:
        """Cell Ontology id and synonyms of each cluster name, when the bundle was exported with them."""
        return self.metadata.get(ONTOLOGY_KEY) or None

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


def _check_metadata(meta: Any, where: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise BundleError(f"{where}: the metadata is not a JSON object; the bundle is corrupt. Re-export it.")
    version = meta.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
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
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or len(meta["thresholds"]) != k:
        raise BundleError(f"{where}: n_clusters and thresholds disagree; the bundle is corrupt. Re-export it.")
    if meta["cluster_names"] is not None and len(meta["cluster_names"]) != k:
        raise BundleError(f"{where}: {len(meta['cluster_names'])} cluster names for {k} clusters; corrupt bundle.")
    if not meta["genes"]:
        raise BundleError(f"{where}: the bundle lists no genes; it is corrupt. Re-export it.")
    if meta.get(ONTOLOGY_KEY) is not None:  # optional: bundles without it are valid
        check_ontology(meta[ONTOLOGY_KEY], meta["cluster_names"], where)
    return meta


class _Replaced(Exception):
    """The bundle folder was swapped for a new version while it was being read."""


def _read_limited(handle: BinaryIO, name: str, limit: int, where: str) -> tuple[bytes, str]:
    """Read ``handle`` to the end, hashing as it goes; refuse more than ``limit`` bytes."""
    digest = hashlib.sha256()
    parts, total = [], 0
    while chunk := handle.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise BundleError(f"{where}: {name} is larger than {limit:,} bytes, more than any sccsa bundle holds; "
                              "the bundle is corrupt or not an sccsa bundle.")
        digest.update(chunk)
        parts.append(chunk)
    return b"".join(parts), digest.hexdigest()


def _limit(name: str) -> int:
    return {MODEL_FILE: MAX_MODEL_BYTES, METADATA_FILE: MAX_METADATA_BYTES}.get(name, MAX_MEMBER_BYTES)


class _FolderMembers:
    """The files of a bundle folder, read through one directory handle (so a folder swapped by
    a writer mid-read is noticed instead of mixing two versions)."""

    def __init__(self, path: Path):
        self.path = path
        self.real = Path(os.path.realpath(path))
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def names(self) -> set[str]:
        return {e.name for e in os.scandir(self.fd) if not e.is_dir()}

    def read(self, name: str) -> tuple[bytes, str]:
        if stat.S_ISLNK(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode):
            destination = Path(os.path.realpath(self.real / name))
            if self.real not in destination.parents:
                raise BundleError(f"{self.path}: {name} is a symbolic link to {destination}, outside the bundle; "
                                  "copy the real file into the bundle folder.")
        fd = os.open(name, os.O_RDONLY, dir_fd=self.fd)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise BundleError(f"{self.path}: {name} is not a regular file; the bundle is corrupt.")
            if info.st_size > _limit(name):
                raise BundleError(f"{self.path}: {name} is {info.st_size:,} bytes, more than any sccsa bundle holds.")
            return _read_limited(handle, name, _limit(name), str(self.path))

    def replaced(self) -> bool:
        """True when ``path`` no longer names the folder this reader opened."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return True
        opened = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)

    def close(self) -> None:
        os.close(self.fd)


class _ZipMembers:
    """The members of a ``.zip`` bundle: at the archive's top level or in one folder, no others."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise BundleError(f"{path} is not a readable .zip bundle ({exc}).") from None
        infos = [i for i in self.archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_MEMBERS:
            self.close()
            raise BundleError(f"{path} holds {len(infos)} files; an sccsa bundle holds a handful. Not a bundle.")
        parts = [info.filename.split("/") for info in infos]
        unsafe = [i.filename for i, p in zip(infos, parts)
                  if i.filename.startswith("/") or "\\" in i.filename or any(s in ("", ".", "..") for s in p)]
        tops = {p[0] for p in parts}
        flat = all(len(p) == 1 for p in parts)
        one_folder = all(len(p) == 2 for p in parts) and len(tops) == 1
        if unsafe or not (flat or one_folder):
            self.close()
            shown = ", ".join((unsafe or [i.filename for i, p in zip(infos, parts) if len(p) > 1])[:3])
            raise BundleError(
                f"{path} has members at nested or unsafe paths ({shown}). A bundle .zip holds the bundle's files at "
                "its top level (or all in one folder); re-create it with `sccsa-train --out NAME.zip` or "
                "`cd bundle && zip ../bundle.zip *`."
            )
        self.infos = {p[-1]: info for info, p in zip(infos, parts)}

    def names(self) -> set[str]:
        return set(self.infos)

    def read(self, name: str) -> tuple[bytes, str]:
        info = self.infos[name]
        if info.file_size > _limit(name):
            raise BundleError(f"{self.path}: {name} inflates to {info.file_size:,} bytes, more than any sccsa "
                              "bundle holds; refusing to unpack it.")
        try:
            with self.archive.open(info) as handle:
                return _read_limited(handle, name, _limit(name), str(self.path))
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise BundleError(f"{self.path}: {name} cannot be unpacked ({exc}); the archive is corrupt.") from None

    def replaced(self) -> bool:
        return False  # the open archive stays the file that was opened, whatever replaces its name

    def close(self) -> None:
        self.archive.close()


def _open_members(path: Path) -> _FolderMembers | _ZipMembers:
    if path.is_dir():
        return _FolderMembers(path)
    if zipfile.is_zipfile(path):
        return _ZipMembers(path)
    raise BundleError(
        f"{path} is neither a bundle directory nor a .zip bundle. Pass the folder that "
        f"`sccsa-train` wrote (it holds {MODEL_FILE} and {METADATA_FILE})."
    )


def _read_metadata(members: _FolderMembers | _ZipMembers, where: str) -> dict[str, Any]:
    """``bundle.json``, read first and bounded; checked before any other file is touched."""
    if METADATA_FILE not in members.names():
        raise BundleError(f"{where} has no {METADATA_FILE}; it is not an sccsa model bundle (or is incomplete).")
    data, _ = members.read(METADATA_FILE)
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}/{METADATA_FILE} is not valid JSON ({exc}); the bundle is corrupt.") from None
    meta = _check_metadata(meta, f"{where}/{METADATA_FILE}")
    files = meta.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise BundleError(f"{where}/{METADATA_FILE} lists no file hashes; the bundle is corrupt. Re-export it.")
    bad = [n for n, d in files.items() if not _plain_name(n) or n == METADATA_FILE or not isinstance(d, str)]
    if bad or len(files) > MAX_MEMBERS:
        raise BundleError(f"{where}/{METADATA_FILE} lists unusable file names ({', '.join(map(repr, bad[:3]))}); "
                          "the bundle is corrupt. Re-export it.")
    return meta


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _load_once(path: Path, verify: bool) -> Bundle:
    members = _open_members(path)
    try:
        meta = _read_metadata(members, str(path))
        files: dict[str, str] = meta["files"]
        present = members.names()
        unlisted = sorted(present - set(files) - {METADATA_FILE})
        if unlisted and isinstance(members, _ZipMembers):
            raise BundleError(
                f"{path} holds files its {METADATA_FILE} does not list ({', '.join(unlisted[:3])}); an sccsa bundle "
                "holds only the files it lists. Re-create the archive from the bundle folder alone."
            )
        if unlisted:
            warnings.warn(f"{path} holds files its {METADATA_FILE} does not list, ignored: {', '.join(unlisted[:5])}",
                          SccsaWarning, stacklevel=3)
        contents = {METADATA_FILE: members.read(METADATA_FILE)[0]}
        for name, digest in files.items():
            if name not in present:
                raise BundleError(f"{path}: {name} is listed in {METADATA_FILE} but missing; copy the whole bundle.")
            contents[name], actual = members.read(name)
            if verify and actual != digest:
                raise BundleError(
                    f"{path}: {name} was altered after export (sha256 {actual[:12]}… but the bundle "
                    f"records {str(digest)[:12]}…). Do not edit bundle files; restore the original "
                    "or re-export the model."
                )
    except (BundleError, OSError):
        if members.replaced():
            raise _Replaced() from None
        raise
    finally:
        members.close()
    log.debug("read bundle %s: %s", path, ", ".join(f"{n} ({len(b):,} bytes)" for n, b in contents.items()))
    return Bundle(source=str(path), metadata=meta, members=contents)


def load_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Load a bundle directory or ``.zip``; with ``verify`` check every file's sha256.

    ``bundle.json`` is read first; only the files it lists are read, each bounded in size and
    hashed as it streams in. A folder that a writer replaces during the read is read again.
    Raises :class:`BundleError` when files are missing, altered, oversized, unlisted (in a
    ``.zip``), linked from outside the bundle, or of a newer schema.
    """
    path = Path(path)
    for attempt in range(LOAD_ATTEMPTS):
        if not path.exists():
            raise BundleError(
                f"Model bundle {path} does not exist. Pass the folder written by `sccsa-train`, or leave "
                "--model out to use the default model shipped with sccsa."
            )
        try:
            return _load_once(path, verify)
        except _Replaced:
            log.info("%s was replaced while being read; reading it again", path)
            time.sleep(0.01 * (attempt + 1))
    raise BundleError(f"{path} was replaced {LOAD_ATTEMPTS} times while being read; try again when writing stops.")


def is_sccsa_bundle(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder or ``.zip`` whose ``bundle.json`` is sccsa's (only that file is read)."""
    try:
        members = _open_members(Path(path))
    except (BundleError, OSError):
        return False
    try:
        _read_metadata(members, str(path))
        return True
    except (BundleError, OSError):
        return False
    finally:
        members.close()


OWN_BUNDLES = ReplaceRule(lambda path: is_empty_folder(path) or is_sccsa_bundle(path),
                          "an sccsa model bundle or an empty folder")
"""What ``--overwrite`` may replace with a bundle."""


def write_bundle(
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    files: Mapping[str, bytes],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``files`` plus ``bundle.json`` (``metadata`` + sha256 of each file) atomically.

    ``path`` ending in ``.zip`` gives a single archive, anything else a directory. Nothing is
    left at ``path`` if writing fails. With ``overwrite`` an existing sccsa bundle (or empty
    folder) is replaced in one atomic step; anything else there is refused. ``files`` must
    contain ``model.onnx``.
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
    with atomic_output(path, directory=not as_zip, overwrite=overwrite, replaceable=OWN_BUNDLES) as tmp:
        if as_zip:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, data in sorted(members.items()):
                    archive.writestr(name, data)
        else:
            for name, data in members.items():
                (tmp / name).write_bytes(data)
    return path
