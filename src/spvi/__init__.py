"""spvi: shared-private variational inference for paired multi-omics."""

from importlib.metadata import version

__version__ = version("spvi")
