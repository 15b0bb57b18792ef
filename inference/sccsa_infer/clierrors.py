"""What both CLIs share around a command: how much they say (``-v``/``-q``), and how a run that
fails ends: one paragraph on stderr, exit status 1, no traceback.

Shared by ``sccsa-infer`` and ``sccsa-train``. SIGTERM is turned into an ordinary exit so that
half-written outputs are removed on the way out (see :mod:`sccsa_infer.atomic`). Logging is
configured here, for the CLIs only: importing sccsa configures nothing.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any

import click

from .atomic import write_failure
from .errors import SccsaError

TERMINATED_EXIT = 128 + signal.SIGTERM
LOGGERS = ("sccsa_infer", "sccsa_train")


def verbosity_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-v`` (stage logs with timings; ``-vv`` debug) and ``-q`` (errors only), consumed by
    :func:`friendly_errors`, which must come below this decorator."""
    command = click.option("-q", "--quiet", is_flag=True, help="Print errors only: no warnings, no logs.")(command)
    return click.option("-v", "--verbose", count=True,
                        help="Log each stage with its timing on stderr (-vv: debug detail).")(command)


def configure_logging(verbose: int, quiet: bool) -> None:
    """Send sccsa's log records to stderr at the level the user asked for."""
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    click.echo(f"Warning: {message}", err=True)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(TERMINATED_EXIT)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``command`` so that sccsa's own errors, storage failures and out-of-memory become a
    one-paragraph message with exit status 1, warnings print as one line on stderr, and
    SIGTERM unwinds (cleaning temporary outputs) instead of killing the process mid-write."""

    @functools.wraps(command)
    def wrapper(*args: Any, verbose: int = 0, quiet: bool = False, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        configure_logging(verbose, quiet)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if quiet else "default")
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
