"""Log hygiene: warnings that point at the user's call, quiet third-party start-up lines, mudata options."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import mudata as md

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_logger = logging.getLogger("spvi")

#: Lightning's start-up lines, shown only when the ``spvi`` logger is at ``DEBUG`` (see :meth:`spvi.SPVI.train`).
LIGHTNING_BANNERS: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.utilities.rank_zero": ("GPU available", "TPU available", "HPU available", "💡 Tip"),
    "lightning.pytorch.accelerators.cuda": ("LOCAL_RANK",),
}
#: scvi-tools' line on registering spvi's internal presence mask (its columns are the modalities, not named there).
#: and its line when spvi hands it a new (internally registered) MuData.
SCVI_SETUP_LINES: dict[str, tuple[str, ...]] = {
    "scvi.data.fields._arraylike_field": ("Generating sequential",),
    "scvi.model.base._base_model": ("Input AnnData not setup",),
}
#: scvi-tools' line on every :meth:`spvi.SPVI.load` (the model file is local, nothing was downloaded).
SCVI_LOAD_LINES: dict[str, tuple[str, ...]] = {"scvi.data._download": ("File ",)}


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """:func:`warnings.warn` pointing at the line that called into spvi.

    That is the caller of the outermost spvi frame on the stack, so the warning names the user's line also
    when spvi calls scvi-tools, which calls back into spvi (e.g. :meth:`spvi.SPVI.load`).
    """
    frame, level, outermost = sys._getframe(0), 1, 1  # level 1: this function, as warnings.warn counts
    while frame is not None:
        if frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            outermost = level
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=outermost + 1)


class _DropLines(logging.Filter):
    """Drop records whose message starts with one of ``prefixes``, unless the ``spvi`` logger is at DEBUG."""

    def __init__(self, prefixes: Sequence[str]):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return _logger.isEnabledFor(logging.DEBUG) or not record.getMessage().startswith(self.prefixes)


@contextmanager
def quiet_lines(lines: Mapping[str, Sequence[str]]) -> Iterator[None]:
    """Within the context, drop the records of the named loggers that start with the given prefixes.

    Nothing is dropped when ``logging.getLogger("spvi")`` is at ``DEBUG``. The filters are removed on exit,
    so the user's own use of these libraries is not affected.
    """
    filters = {name: _DropLines(prefixes) for name, prefixes in lines.items()}
    for name, line_filter in filters.items():
        logging.getLogger(name).addFilter(line_filter)
    try:
        yield
    finally:
        for name, line_filter in filters.items():
            logging.getLogger(name).removeFilter(line_filter)


@contextmanager
def no_pull_on_update() -> Iterator[None]:
    """Use mudata's ``pull_on_update=False`` (its future default) for spvi's own MuData calls, restored after.

    Avoids mudata's FutureWarning about ``update()`` without changing the user's options, and without the
    INFO lines of ``with mudata.set_options(...)``.
    """
    previous = md.set_options(pull_on_update=False).opts
    try:
        yield
    finally:
        md.set_options(**previous)


#: FutureWarnings one dependency raises about another, which a user of spvi cannot act on: mudata's on
#: ``MuData.mod_names`` (scvi-tools 1.4 calls it when loading a model) and torch 2.13's on ``LeafSpec`` (Lightning
#: 2.x builds one in every training run).
DEPENDENCY_DEPRECATIONS = ("The method mod_names is deprecated", r"`isinstance\(treespec, LeafSpec\)` is deprecated")


@contextmanager
def without_dependency_deprecations() -> Iterator[None]:
    """Hide :data:`DEPENDENCY_DEPRECATIONS` within the context (the user's warning filters are restored on exit)."""
    with warnings.catch_warnings():
        for message in DEPENDENCY_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield
