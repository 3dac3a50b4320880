#!/usr/bin/env bash
# Build the documentation into docs/_build/html with warnings as errors (offline; notebooks are not executed).
# Needs .venv with spvi (bash scripts/setup.sh); installs the doc extra into it first. Always a clean build: an
# incremental one does not repeat the warnings of unchanged pages and keeps pages of removed notebooks.
# SPVI_DOCS_INTERSPHINX=1 adds links to the Python, NumPy, pandas, MuData, scvi-tools and PyTorch docs (needs the internet).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[doc]"
rm -rf docs/_build docs/generated
.venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html
