"""Write files and folders atomically: into a temporary sibling, then rename into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


def _default_mode(directory: bool) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def check_writable(
    target: str | os.PathLike[str], *, overwrite: bool = True, directory: bool = False
) -> Path:
    """Fail early, with a clear message, when ``target`` cannot be created (or replaced)."""
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"Cannot write {target}: folder {parent} does not exist. Create it or choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {target}: folder {parent} is not writable. Choose another output path.")
    if target.exists():
        if not overwrite:
            raise OutputError(f"{target} already exists; choose another output path or pass --overwrite.")
        if target.is_dir() != directory:
            kind = "folder" if target.is_dir() else "file"
            raise OutputError(f"{target} exists and is a {kind}; choose another output path.")
    return target


@contextmanager
def atomic_output(
    target: str | os.PathLike[str], *, directory: bool = False, overwrite: bool = True
) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    If the block raises, the temporary file/folder is removed and ``target`` is untouched.
    """
    target = check_writable(target, overwrite=overwrite, directory=directory)
    parent = target.parent
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise OutputError(f"Cannot write {target}: {exc.strerror}. Choose another output path.") from None
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory))
        if directory and target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent)) / target.name
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old.parent, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
