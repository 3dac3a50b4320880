"""The MOFA chronic lymphocytic leukaemia (CLL) cohort, shipped with the package."""

from os import PathLike

import mudata as md

from ._files import read_packaged_or_local


def cll(path: str | PathLike | None = None) -> md.MuData:
    """Load the MOFA CLL cohort: mRNA, DNA methylation, drug response and mutations of 200 patients.

    The data of Dietrich et al. (2018, J Clin Invest 128:427) as prepared for MOFA by Argelaguet et al.
    (2018, Mol Syst Biol 14:e8124), redistributed from the test data of ``mofaflex==0.1.2`` (BSD-3-Clause;
    upstream Bioconductor data LGPL-3). It is the CLL data set of Märtens & Yau (2023, arXiv:2403.06338),
    who use mRNA and methylation with IGHV status as the shared biomarker. A copy ships with spvi, see
    ``spvi/datasets/data/README.md``.

    Modalities (patients x features):

    - ``rna``: 136 x 5000 log expression, ``var["symbol"]`` and ``var["ensembl_id"]``;
    - ``meth``: 196 x 4248 CpG methylation M-values;
    - ``drugs``: 184 x 310 ex vivo drug response (viability at 5 concentrations of 62 drugs);
    - ``mut``: 200 x 69 binary somatic mutations and copy-number aberrations, NaN where not measured.

    The modalities overlap only partially: a patient without a modality is absent from that modality's
    AnnData (135 patients have both ``rna`` and ``meth``). ``obs`` holds ``IGHV`` (1 mutated, 0 unmutated,
    NaN unknown), ``IGHV_status``, ``trisomy12``, ``Gender``, ``age``, ``TTT`` (time to treatment), ``TTD``
    (time to death), ``treatedAfter``, ``died`` and ``has_rna``/``has_meth``/``has_drugs``/``has_mut``.

    Parameters
    ----------
    path
        An ``.h5mu`` file to read instead of the copy shipped with spvi.

    Returns
    -------
    MuData with the modalities ``rna``, ``meth``, ``drugs`` and ``mut``; ``uns["source"]`` gives the provenance.

    Examples
    --------
    >>> mdata = spvi.datasets.cll()
    >>> mdata["rna"].shape
    (136, 5000)
    """
    return read_packaged_or_local("cll_mofa.h5mu", path, "CLL")
