"""Shared fixtures: small real data sets from ``../shared/data`` (CI has ``../shared`` beside the checkout)."""

from pathlib import Path

import mudata as md
import pytest
import scvi

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

md.set_options(pull_on_update=False)
scvi.settings.seed = 0


def data_path(name: str) -> Path:
    """Path of a shared data file; fails the test with a clear message when ``../shared`` is missing."""
    path = DATA_DIR / name
    if not path.exists():
        pytest.fail(f"test data {path} not found: clone the repository with ../shared beside it")
    return path


@pytest.fixture
def cll_path() -> Path:
    return data_path("cll_mofa.h5mu")


@pytest.fixture
def cite_path() -> Path:
    return data_path("pbmc_cite_midas.h5mu")


@pytest.fixture
def multiome_path() -> Path:
    return data_path("pbmc_multiome_muontest.h5mu")


@pytest.fixture
def tcga_path() -> Path:
    return data_path("tcga_brca_mixomics.h5mu")
