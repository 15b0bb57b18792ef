"""How both CLIs end a run that fails: one paragraph on stderr, exit status 1, no traceback.

Shared by ``sccsa-infer`` and ``sccsa-train``. SIGTERM is turned into an ordinary exit so that
half-written outputs are removed on the way out (see :mod:`sccsa_infer.atomic`).
"""

from __future__ import annotations

import functools
import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any

import click

from .atomic import write_failure
from .errors import SccsaError

TERMINATED_EXIT = 128 + signal.SIGTERM


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    click.echo(f"Warning: {message}", err=True)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(TERMINATED_EXIT)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``command`` so that sccsa's own errors, storage failures and out-of-memory become a
    one-paragraph message with exit status 1, warnings print as one line on stderr, and
    SIGTERM unwinds (cleaning temporary outputs) instead of killing the process mid-write."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            try:
                return command(*args, **kwargs)
            except SccsaError as exc:
                raise click.ClickException(str(exc)) from None
            except MemoryError:
                raise click.ClickException(
                    "Ran out of memory. Lower --batch-size, or run on a machine with more memory."
                ) from None
            except OSError as exc:
                reason = write_failure(exc) or exc.strerror or str(exc)
                where = f" ({exc.filename})" if exc.filename else ""
                raise click.ClickException(f"A file operation failed{where}: {reason}. Nothing was written.") from None

    return wrapper
