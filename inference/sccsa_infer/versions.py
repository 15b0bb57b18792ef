"""Versions recorded in bundles, and the warning when the serving side differs in a way that matters."""

from __future__ import annotations

import platform
import re
import warnings
from collections.abc import Mapping
from importlib import metadata

from .errors import SccsaWarning

SERVING_DISTRIBUTION = "sccsa-infer"  # the serving half's own distribution; `sccsa` (training) depends on it


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or ``None`` when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def parse_version(text: str | None) -> tuple[int, ...]:
    """Leading numeric components of a version string ('2.13.0+cpu' → (2, 13, 0))."""
    if not text:
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def serving_versions() -> dict[str, str | None]:
    """Versions of the packages that determine what the serving half computes."""
    return {
        "sccsa": package_version(SERVING_DISTRIBUTION),  # released together: one version number
        "onnxruntime": package_version("onnxruntime"),
        "numpy": package_version("numpy"),
        "python": platform.python_version(),
    }


def warn_on_version_mismatch(recorded: Mapping[str, str | None], source: str) -> list[str]:
    """Warn when the bundle was made by a newer sccsa (major.minor) or validated with a newer
    ONNX Runtime (major.minor) than the ones installed here; return the warnings issued."""
    here = serving_versions()
    messages = []
    for name, advice in (
        ("sccsa", "upgrade sccsa to get the same preprocessing and labels"),
        ("onnxruntime", "upgrade onnxruntime if the model fails to load or labels differ"),
    ):
        made, have = parse_version(recorded.get(name)), parse_version(here.get(name))
        if made and have and made[:2] > have[:2]:
            messages.append(
                f"{source} was made with {name} {recorded.get(name)}, newer than the {here.get(name)} "
                f"installed here; {advice}."
            )
    for message in messages:
        warnings.warn(message, SccsaWarning, stacklevel=3)
    return messages
