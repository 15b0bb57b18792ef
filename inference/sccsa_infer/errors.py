"""Exceptions that carry a message meant for the user: the problem and the fix."""

from __future__ import annotations


class SccsaError(Exception):
    """Base class of every error sccsa raises on purpose.

    The CLIs print ``str(error)`` without a traceback and exit with a non-zero code,
    so the message must name the problem and say how to fix it.
    """


class InputDataError(SccsaError, ValueError):
    """The cells × genes data cannot be used as given (values, genes, shape)."""


class InvalidParameterError(SccsaError, ValueError, TypeError):
    """A parameter of the estimator or an option of a CLI is out of its range or choices
    (the name scikit-learn gives the same error)."""


class BundleError(SccsaError):
    """A model bundle is missing, corrupt, tampered with or of an unknown schema."""


class OutputError(SccsaError, OSError):
    """A result cannot be written where the user asked."""


class SccsaWarning(UserWarning):
    """Something the user should know about that does not stop the run."""


def shorten(name: object, width: int = 40) -> str:
    """``name`` cut to ``width`` characters, for messages that quote user data (gene names can
    be thousands of characters long)."""
    text = str(name)
    return text if len(text) <= width else text[: width - 1] + "…"
