"""Data sets: simulated shared-private data and real multi-omics data shipped with spvi."""

from ._cll import cll
from ._pbmc_cite import pbmc_cite_mosaic
from ._perturbation import synthetic_perturbation
from ._synthetic import synthetic_gp

__all__ = ["cll", "pbmc_cite_mosaic", "synthetic_gp", "synthetic_perturbation"]
