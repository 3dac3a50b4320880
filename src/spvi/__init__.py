"""spvi: shared-private variational inference for paired multi-omics."""

from importlib.metadata import version

from spvi import datasets, metrics, pl, pp, tl
from spvi._likelihoods import LIKELIHOODS
from spvi._model import SPVI
from spvi._module import SPVAE
from spvi._objectives import OBJECTIVES

__version__ = version("spvi")
__all__ = ["LIKELIHOODS", "OBJECTIVES", "SPVAE", "SPVI", "datasets", "metrics", "pl", "pp", "tl"]
