"""Sphinx configuration (cookiecutter-scverse layout).

Build with ``bash scripts/build_docs.sh``. The build works offline: intersphinx links to Python, NumPy, pandas,
MuData, scvi-tools and PyTorch are only made when ``SPVI_DOCS_INTERSPHINX=1`` is set (they need the internet).

Two folders of the docs are made here before every build (both git-ignored):

- ``docs/tutorials/``: a copy of every ``tutorials/*.ipynb``, rendered with the outputs it was committed with (never
  executed) and listed on ``docs/tutorials.md``.
- ``docs/benchmarks/``: a mirror of ``benchmarks/``: one page per Markdown file that includes the original, and a
  copy of every other (small) file. The repository's relative links (``README.md`` -> ``benchmarks/README.md``,
  ``benchmarks/README.md`` -> ``results/...``) then resolve to these pages and downloads, wherever they point.
"""

import os
import shutil
import warnings
from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent

info = metadata("spvi")
project = info["Name"]
author = "spvi developers"
copyright = f"{datetime.now():%Y}, {author}"
version = info["Version"]
release = version

# sphinx-autodoc-typehints 3.x calls an API that Sphinx 9 deprecates: a Python warning, not a docs problem
warnings.filterwarnings("ignore", message=r".*_RstSnippetParser\.set_application.*")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinx_design",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# --- API reference
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False

# --- Markdown and notebooks
myst_enable_extensions = ["amsmath", "colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
# the included benchmark tables and the notebooks may skip heading levels (H1 -> H3); that is not an error here
suppress_warnings = ["myst.header"]
nb_execution_mode = "off"  # notebooks are committed executed; the docs build never runs them
nb_merge_streams = True
# progress bars of executed notebooks (ipywidgets) have no static rendering: show their text/plain fallback
nb_mime_priority_overrides = [("*", "application/vnd.jupyter.widget-view+json", None)]

# --- intersphinx only on demand: the docs must build offline and without warnings
intersphinx_mapping = {}
if os.environ.get("SPVI_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "pandas": ("https://pandas.pydata.org/docs/", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "mudata": ("https://mudata.readthedocs.io/en/latest/", None),
        "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
        "torch": ("https://pytorch.org/docs/stable/", None),
        "matplotlib": ("https://matplotlib.org/stable/", None),
    }

# --- HTML
html_theme = "sphinx_book_theme"
html_title = "spvi"
html_theme_options = {
    "repository_url": dict(url.split(", ", 1) for url in info.get_all("Project-URL") or [])["Source"],
    "use_repository_button": True,
    "navigation_with_keys": False,
}


# --- tutorials: copy tutorials/*.ipynb into docs/tutorials/ (git-ignored) and list them on docs/tutorials.md
TUTORIALS_SOURCE = REPO / "tutorials"
TUTORIALS_COPY = HERE / "tutorials"
TUTORIALS_MARKER = "<!-- tutorial notebooks -->"


def _sync_tutorials() -> list[str]:
    """Mirror ``tutorials/*.ipynb`` into ``docs/tutorials/``; return the copied notebook names (stems), sorted."""
    notebooks = sorted(TUTORIALS_SOURCE.glob("*.ipynb"))
    TUTORIALS_COPY.mkdir(exist_ok=True)
    for stale in TUTORIALS_COPY.iterdir():
        if stale.is_file() and stale.name not in {nb.name for nb in notebooks}:
            stale.unlink()
    for notebook in notebooks:
        copy = TUTORIALS_COPY / notebook.name
        if not copy.exists() or copy.read_bytes() != notebook.read_bytes():
            shutil.copy2(notebook, copy)
    return [nb.stem for nb in notebooks]


TUTORIALS = _sync_tutorials()


def _tutorial_list(app, docname: str, source: list[str]) -> None:
    """Replace the marker on the tutorials page by a toctree of the notebooks (or a note that there are none)."""
    if docname != "tutorials":
        return
    if TUTORIALS:
        entries = "\n".join(f"tutorials/{name}" for name in TUTORIALS)
        listing = f"```{{toctree}}\n:maxdepth: 1\n\n{entries}\n```\n"
    else:
        listing = "No tutorial notebooks are in this checkout yet (`tutorials/*.ipynb`).\n"
    source[0] = source[0].replace(TUTORIALS_MARKER, listing)


def _reread_tutorials(app, env, added, changed, removed) -> list[str]:
    """Re-read the tutorials page on every build: its toctree depends on files outside docs/."""
    return ["tutorials"]


# --- benchmarks: mirror benchmarks/ into docs/benchmarks/ (git-ignored)
BENCHMARKS_SOURCE = REPO / "benchmarks"
BENCHMARKS_COPY = HERE / "benchmarks"
MAX_COPIED_BYTES = 2**21  # data files larger than this are left out of the docs


def _write_if_changed(path: Path, content: bytes) -> None:
    if not path.exists() or path.read_bytes() != content:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _sync_benchmarks() -> None:
    """Make ``docs/benchmarks/`` mirror ``benchmarks/``: Markdown files as include pages, the rest copied."""
    sources = [
        path
        for path in sorted(BENCHMARKS_SOURCE.rglob("*"))
        if path.is_file()
        and not any(part.startswith((".", "__pycache__")) for part in path.relative_to(BENCHMARKS_SOURCE).parts)
    ]
    pages = [path.relative_to(BENCHMARKS_SOURCE) for path in sources if path.suffix == ".md"]
    wanted = set()
    for path in sources:
        relative = path.relative_to(BENCHMARKS_SOURCE)
        target = BENCHMARKS_COPY / relative
        if path.suffix == ".md":
            include = Path(os.path.relpath(path, target.parent)).as_posix()
            content = f"```{{include}} {include}\n```\n"
            if relative == Path("README.md"):  # the benchmarks page: every other page hangs below it
                others = "\n".join(page.with_suffix("").as_posix() for page in pages if page != relative)
                content += f"\n```{{toctree}}\n:hidden: true\n\n{others}\n```\n"
            _write_if_changed(target, content.encode())
        elif path.suffix not in source_suffix and path.stat().st_size <= MAX_COPIED_BYTES:  # no orphan pages
            _write_if_changed(target, path.read_bytes())
        else:
            continue
        wanted.add(target)
    for stale in sorted(BENCHMARKS_COPY.rglob("*"), reverse=True) if BENCHMARKS_COPY.exists() else []:
        if stale.is_file() and stale not in wanted:
            stale.unlink()
        elif stale.is_dir() and not any(stale.iterdir()):
            stale.rmdir()


_sync_benchmarks()


def _prose_returns(app, what, name, obj, options, lines: list[str]) -> None:
    """Render spvi's prose "Returns" sections (the type comes from the annotation) as one description.

    sphinx-autodoc-typehints puts a line ``:`` (no name, no type) under a numpy "Returns" header; the prose below it
    must be indented to be that entry's description, or napoleon reads every line as a type.
    """
    for start in range(len(lines) - 2):
        if (
            lines[start].strip().lower() == "returns"
            and set(lines[start + 1].strip()) == {"-"}
            and lines[start + 2] == ":"
        ):
            body = start + 3
            end = body
            while end < len(lines) and not (
                end + 1 < len(lines) and lines[end].strip() and set(lines[end + 1].strip()) == {"-"}
            ):
                end += 1
            if any(line.startswith(" ") for line in lines[body:end]):
                return  # a numpy "type / indented description" entry: leave it to napoleon
            lines[body:end] = [f"    {line}" if line.strip() else line for line in lines[body:end]]
            return


def setup(app):
    # after sphinx-autodoc-typehints' own handler (same priority, connected later), before napoleon's
    app.connect("autodoc-process-docstring", _prose_returns, priority=499)
    app.connect("source-read", _tutorial_list)
    app.connect("env-get-outdated", _reread_tutorials)
