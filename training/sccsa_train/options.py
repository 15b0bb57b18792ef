"""The choices of the training options (importable without torch, for the CLI's --help)."""

GENE_SELECTIONS: tuple[str, ...] = ("ftest", "hvg")
GENE_ORDERS: tuple[str, ...] = ("correlation", "fscore", "input")
CC_MODES: tuple[str, ...] = ("sa", "fixed", "off")
CENTROID_INITS: tuple[str, ...] = ("kmeans", "labels")
DEFAULT_CHANNELS: tuple[int, int, int] = (16, 32, 64)
