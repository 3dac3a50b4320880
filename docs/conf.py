"""Sphinx configuration (cookiecutter-scverse layout)."""

from datetime import datetime
from importlib.metadata import metadata

info = metadata("spvi")
project = info["Name"]
author = "spvi developers"
copyright = f"{datetime.now():%Y}, {author}"
version = info["Version"]
release = version

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
autodoc_member_order = "groupwise"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
myst_enable_extensions = ["amsmath", "colon_fence", "dollarmath"]
nb_execution_mode = "off"
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "mudata": ("https://mudata.readthedocs.io/en/latest/", None),
    "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
    "torch": ("https://pytorch.org/docs/stable/", None),
}
html_theme = "sphinx_book_theme"
html_title = "spvi"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
