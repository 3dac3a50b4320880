"""Data sets: simulated shared-private data and a real multi-omics cohort."""

from ._cll import cll
from ._synthetic import synthetic_gp

__all__ = ["cll", "synthetic_gp"]
