"""Reading the data files that ship with spvi (or a user's copy of them)."""

from importlib.resources import as_file, files
from os import PathLike
from pathlib import Path

import mudata as md

from spvi._logging import no_pull_on_update


def read_packaged_or_local(packaged_file: str, path: str | PathLike | None, description: str) -> md.MuData:
    """Read ``path`` if given, else the copy of ``packaged_file`` in ``spvi/datasets/data``.

    The global ``obs`` and ``var`` are kept as stored (``pull_on_update=False``).
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{description} data file {path} does not exist; pass path=None to load the packaged copy"
            )
        return _read(path)
    with as_file(files(__package__).joinpath("data", packaged_file)) as packaged:
        return _read(packaged)


def _read(path: Path) -> md.MuData:
    with no_pull_on_update():
        return md.read_h5mu(path)
