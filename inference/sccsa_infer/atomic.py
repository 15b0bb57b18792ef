"""Write files and folders safely: never over something sccsa did not write, never half-done.

Every output is first written into a temporary sibling named after the target, the host and
the process (``.NAME.sccsa-tmp-HOST-PID-XXXXXXXX``), then renamed into place while holding a
lock on the parent folder, so two writers cannot interleave their renames. A folder that
already exists is swapped with the new one in one atomic step (Linux ``renameat2`` with
``RENAME_EXCHANGE``), so a reader sees either the old or the new folder, never neither and
never a mix. Temporaries left behind by a killed process are removed by the next write to
the same target on the same host.

Nothing is ever replaced that the caller's :class:`ReplaceRule` does not accept: the CLIs
only replace bundles and result files that sccsa itself wrote.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OutputError

try:  # POSIX only; elsewhere writers are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

TEMP_MARK = ".sccsa-tmp-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# errno values that mean "the storage refused the write", reported as such
_WRITE_FAILURES = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EFBIG: "the file is larger than this system allows",
                   errno.EROFS: "the file system is read-only",
                   errno.EIO: "the device reported an I/O error"}
_WRITE_FAILURE_TEXT = {"No space left": errno.ENOSPC, "Disk quota": errno.EDQUOT, "File too large": errno.EFBIG,
                       "errno = 28": errno.ENOSPC, "errno = 27": errno.EFBIG}



@dataclass(frozen=True)
class ReplaceRule:
    """Which existing outputs may be replaced (``accepts``), and how an error names them."""

    accepts: Callable[[Path], bool]
    what: str


def absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute and normalised (``..`` folded), without following symlinks."""
    return Path(os.path.abspath(os.fspath(path)))


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it."""
    return path == folder or folder in path.parents


def _real(path: Path) -> Path:
    """``path`` with symlinks resolved as far as it exists (the rest kept as written)."""
    return Path(os.path.realpath(path))


def check_no_overlap(
    target: Path, others: Iterable[str | os.PathLike[str] | None], *, option: str = "--out", role: str = "the input"
) -> None:
    """Refuse an output that is, or contains, one of ``others`` (the run's inputs) or the current
    folder: replacing it would delete the user's data or the folder they work in."""
    target_real = _real(absolute(target))
    if not target_real.name:
        raise OutputError(f"{option} {target} is the root folder; write into a folder of its own.")
    if _inside(_real(Path.cwd()), target_real):
        raise OutputError(
            f"{option} {target} is the current folder or one that contains it; sccsa will not replace it. "
            "Write to a new folder (e.g. --out model/)."
        )
    for item in others:
        if item is None:
            continue
        item_real = _real(absolute(item))
        if _inside(item_real, target_real):
            what = "is" if item_real == target_real else "contains"
            raise OutputError(
                f"{option} {target} {what} {role} {item}; sccsa never overwrites its inputs or a folder holding "
                "them. Choose an output path outside it."
            )


def check_writable(
    target: str | os.PathLike[str],
    *,
    overwrite: bool = True,
    directory: bool = False,
    replaceable: ReplaceRule | None = None,
    option: str = "--out",
) -> Path:
    """Fail early, with a clear message, when ``target`` cannot be created or may not be replaced.

    An existing ``target`` is replaced only with ``overwrite`` and only when the
    ``replaceable`` rule accepts it (default: nothing existing is replaceable). The rule is
    evaluated under the parent folder's lock, so a concurrent sccsa writer swapping ``target``
    cannot make it misjudge. Returns ``target`` made absolute.
    """
    shown = target
    target = absolute(target)
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"Cannot write {shown}: folder {parent} does not exist. Create it or choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {shown}: folder {parent} is not writable. Choose another output path.")
    with _parent_locked(parent):
        _check_existing(target, shown, overwrite=overwrite, directory=directory, replaceable=replaceable,
                        option=option)
    return target


def _check_existing(target: Path, shown: Any, *, overwrite: bool, directory: bool, replaceable: ReplaceRule | None,
                    option: str) -> None:
    """Refuse to replace an existing ``target`` unless allowed (call with the parent locked)."""
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise OutputError(f"{shown} already exists; choose another output path or pass --overwrite.")
    if target.is_symlink():
        raise OutputError(
            f"{shown} is a symbolic link; sccsa does not replace files through links. Write to a new path "
            "and repoint the link yourself (ln -s NEW tmp-link && mv -T tmp-link LINK is atomic)."
        )
    if target.is_dir() != directory:
        kind = "folder" if target.is_dir() else "file"
        raise OutputError(f"{shown} exists and is a {kind}; choose another output path.")
    if replaceable is None or not replaceable.accepts(target):
        what = replaceable.what if replaceable is not None else "something sccsa may replace"
        raise OutputError(
            f"{option} {shown} exists and is not {what}; sccsa only replaces its own outputs, so nothing "
            "was changed. Choose another output path, or move it away yourself."
        )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a file, link or folder (a link is removed, never followed)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:  # best effort: a leftover temporary must not fail the run
        log.warning("could not remove %s: %s", path, exc)


def stale_temporaries(target: Path) -> list[Path]:
    """Temporaries of ``target`` whose writer, a process on this host, no longer runs."""
    prefix = f".{target.name}{TEMP_MARK}"
    host = socket.gethostname()
    stale = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        parts = entry.name[len(prefix):].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if not _process_alive(int(parts[1])):
            stale.append(entry)
    return stale


@contextmanager
def _parent_locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (serialises renames of sccsa writers)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - not glibc/Linux
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def _default_mode(directory: bool) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def write_failure(exc: BaseException) -> str | None:
    """What the storage refused, when ``exc`` says a write failed for lack of space or rights."""
    if not isinstance(exc, OSError):
        return None
    code = exc.errno
    if code not in _WRITE_FAILURES:
        text = str(exc)
        code = next((c for needle, c in _WRITE_FAILURE_TEXT.items() if needle in text), None)
    return _WRITE_FAILURES.get(code) if code is not None else None


def _commit(tmp: Path, target: Path, *, directory: bool, overwrite: bool, replaceable: ReplaceRule | None) -> None:
    """Move the finished ``tmp`` onto ``target`` under the parent's lock; re-check ``target``
    there, since another process may have written it while this one worked."""
    with _parent_locked(target.parent):
        if os.path.lexists(target):
            _check_existing(target, target, overwrite=overwrite, directory=directory, replaceable=replaceable,
                            option="--out")
            if directory:
                if not _exchange(tmp, target):
                    # No atomic exchange here: two renames, still serialised by the lock.
                    aside = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
                    os.rename(target, aside / "old")
                    os.rename(tmp, target)
                    tmp = aside
                _remove(tmp)  # the previous version, now at the temporary name
                return
        os.replace(tmp, target)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}-"


@contextmanager
def atomic_output(
    target: str | os.PathLike[str],
    *,
    directory: bool = False,
    overwrite: bool = True,
    replaceable: ReplaceRule | None = None,
) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it onto ``target``.

    If the block raises (or the process gets SIGTERM through the CLIs), the temporary is
    removed and ``target`` is untouched. Storage failures (disk full, quota, read-only) become
    :class:`OutputError` naming the problem.
    """
    shown = target
    target = check_writable(target, overwrite=overwrite, directory=directory, replaceable=replaceable)
    for leftover in stale_temporaries(target):
        log.info("removing %s, left by a killed sccsa run", leftover)
        _remove(leftover)
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), dir=target.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise OutputError(f"Cannot write {shown}: {exc.strerror}. Choose another output path.") from None
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory))
        _commit(tmp, target, directory=directory, overwrite=overwrite, replaceable=replaceable)
    except BaseException as exc:
        _remove(tmp)
        reason = write_failure(exc)
        if reason is not None:
            raise OutputError(
                f"Could not write {shown}: {reason}. Nothing was written; free some space or choose another "
                "output location, then run again."
            ) from None
        raise


def is_empty_folder(path: Path) -> bool:
    """True for a folder with nothing in it (the one kind of foreign folder sccsa may fill)."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        with os.scandir(path) as entries:  # closed even when any() stops at the first entry
            return not any(entries)
    except OSError:
        return False
