"""Defaults the CLI shows in ``--help``, kept apart from the modules that use them so that
``sccsa-infer --help`` (and a bad path) answer without importing ONNX Runtime or scikit-learn."""

DEFAULT_BATCH_SIZE = 4096  # cells read and labelled per chunk
DEFAULT_MIN_COVERAGE = 0.5  # fraction of the model's genes a query must have
MODEL_ENV = "SCCSA_MODEL"  # environment variable naming the default model bundle
KEY_ADDED = "sccsa"  # prefix of every obs/obsm/uns key sccsa writes (Scanpy's key_added)
