"""Defaults the CLI shows in ``--help``, kept apart from the modules that use them so that
``sccsa-infer --help`` (and a bad path) answer without importing ONNX Runtime or scikit-learn."""

DEFAULT_BATCH_SIZE = 1024  # cells read and labelled per block; larger blocks were no cheaper per cell in
# development runs
GRAPH_ROWS = 512  # at most this many cells per ONNX Runtime call, whatever the block: its buffers grow with the
# rows of one call (the 1000-gene default: 124 MiB resident at 512 rows, 170 at 1024, 266 at 2048) while
# the cells per CPU-second stay level from 256 rows up (development runs, one thread)
DEFAULT_MIN_COVERAGE = 0.5  # fraction of the model's genes a query must have
MODEL_ENV = "SCCSA_MODEL"  # environment variable naming the default model bundle
KEY_ADDED = "sccsa"  # prefix of every obs/obsm/uns key sccsa writes (Scanpy's key_added)


def bar_disabled(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` flag: ``None`` lets tqdm show bars on a terminal (or in
    a notebook) and keep them out of log files and pipes; ``True`` turns them off."""
    return None if progress else True
