"""A small PBMC CITE-seq mosaic (RNA + surface protein counts), shipped with the package."""

from os import PathLike

import mudata as md

from ._files import read_packaged_or_local


def pbmc_cite_mosaic(path: str | PathLike | None = None) -> md.MuData:
    """Load a PBMC CITE-seq mosaic: 1600 cells, RNA and surface-protein counts, some cells with one modality only.

    Real peripheral blood mononuclear cells from the quick-start data of scMIDAS (``scmidas==0.3.0``, MIT
    licence; He et al. 2024, *Nat Biotechnol*, doi:10.1038/s41587-023-02040-y). Four batches: ``p1_0`` has RNA
    only, ``p2_0`` protein only, ``p3_0`` and ``p4_0`` both (800 paired cells). A copy ships with spvi, see
    ``spvi/datasets/data/README.md``.

    Modalities (cells x features), integer counts in ``.X`` (CSR) and ``layers["counts"]``:

    - ``rna``: 1200 x 500 genes;
    - ``protein``: 1200 x 224 antibody-derived tags.

    A cell without a modality is absent from that modality's AnnData. ``obs`` holds ``batch``, ``cell_type``
    (8 annotated types), ``has_rna``, ``has_protein`` and ``paired``.

    Parameters
    ----------
    path
        An ``.h5mu`` file to read instead of the copy shipped with spvi.

    Returns
    -------
    MuData with the modalities ``rna`` and ``protein``; ``uns["source"]`` gives the provenance.

    Examples
    --------
    >>> mdata = spvi.datasets.pbmc_cite_mosaic()
    >>> mdata["rna"].shape, mdata["protein"].shape
    ((1200, 500), (1200, 224))
    """
    return read_packaged_or_local("pbmc_cite_midas.h5mu", path, "PBMC CITE-seq")
