"""Defaults the CLI shows in ``--help``, kept apart from the modules that use them so that
``sccsa-infer --help`` (and a bad path) answer without importing ONNX Runtime or scikit-learn."""

DEFAULT_BATCH_SIZE = 1024  # cells read and labelled per block: ONNX Runtime's buffers grow with the block,
# and larger blocks were no cheaper per cell in development runs
DEFAULT_MIN_COVERAGE = 0.5  # fraction of the model's genes a query must have
MODEL_ENV = "SCCSA_MODEL"  # environment variable naming the default model bundle
KEY_ADDED = "sccsa"  # prefix of every obs/obsm/uns key sccsa writes (Scanpy's key_added)


def bar_disabled(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` flag: ``None`` lets tqdm show bars on a terminal (or in
    a notebook) and keep them out of log files and pipes; ``True`` turns them off."""
    return None if progress else True
