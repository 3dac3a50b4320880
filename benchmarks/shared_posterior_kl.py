"""How much each modality's encoder puts into ``z_shared``: mean KL(q_m(z_shared | x_m) || N(0, I)) after training.

The basis of the threshold of ``SPVI.train``'s warning that a modality leaves ``z_shared`` at the prior
(``spvi._model._COLLAPSED_SHARED_KL``, 0.1 nats). One model per data set, seed 0, default model options unless
given, over all cells that have the modality:

- ``screen``: ``spvi.datasets.synthetic_perturbation()`` (its defaults), ``nb`` for RNA and guides, replicate as
  batch, 100 epochs; at the defaults and with ``alignment_weight=0, shared_kl_weight=0.1``;
- ``cll``: the CLL cohort's patients with both modalities, Gaussian mRNA and methylation, 5 + 5, 300 epochs;
- ``tcga``: TCGA breast cancer, three modalities, 5 + 5, 300 epochs;
- ``cite``: the PBMC CITE-seq mosaic, ``nb`` + ``nbmixture``, 10 + 5, 100 epochs;
- ``mop``: 3,000 SNARE-seq nuclei (peaks open in >= 2%), ``nb`` + ``bernoulli``, 10 + 10, 100 epochs.

Usage::

    python benchmarks/shared_posterior_kl.py screen cll tcga cite mop     # ~6 min on one core

Prints one line per model (the numbers quoted in ``docs/settings.md``, "Guide counts").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import mudata as md
import scvi
import torch

import spvi

sys.path.insert(0, str(Path(__file__).parent / "integration"))
from loading import DATA_FILES, SHARED_DATA, load_cite, load_mop


def fit(label: str, mdata: md.MuData, setup: dict, epochs: int, **model_kwargs) -> None:
    spvi.SPVI.setup_mudata(mdata, **setup)
    scvi.settings.seed = 0
    model = spvi.SPVI(mdata, **model_kwargs)
    start = time.perf_counter()
    model.train(max_epochs=epochs, enable_progress_bar=False)
    seconds = time.perf_counter() - start
    mean_kl = {name: round(kl, 3) for name, kl in model._mean_shared_kl().items()}
    print(f"{label}, {epochs} epochs: {mean_kl} ({seconds:.0f} s)", flush=True)


def main(datasets: list[str]) -> None:
    torch.set_num_threads(1)
    if "screen" in datasets:
        screen = spvi.datasets.synthetic_perturbation(seed=0)
        setup = {"modalities": ["rna", "guide"], "likelihoods": {"rna": "nb", "guide": "nb"}, "batch_key": "replicate"}
        fit("screen, defaults", screen.copy(), setup, 100)
        fit(
            "screen, alignment_weight=0, shared_kl_weight=0.1",
            screen.copy(),
            setup,
            100,
            alignment_weight=0,
            shared_kl_weight=0.1,
        )
    if "cll" in datasets:
        cll = spvi.datasets.cll()
        cll = cll[(cll.obs["has_rna"].astype(bool) & cll.obs["has_meth"].astype(bool)).to_numpy()].copy()
        setup = {"modalities": ["rna", "meth"], "likelihoods": {"rna": "gaussian", "meth": "gaussian"}}
        fit("CLL", cll, setup, 300, n_shared=5, n_private=5)
    if "tcga" in datasets:
        tcga = md.read_h5mu(SHARED_DATA / "tcga_brca_mixomics.h5mu")
        fit("TCGA", tcga, {"modalities": ["rna", "mirna", "protein"]}, 300, n_shared=5, n_private=5)
    for name, loader, n_private in (("cite", load_cite, 5), ("mop", load_mop, 10)):
        if name in datasets:
            dataset = (
                loader(SHARED_DATA / DATA_FILES[name])
                if name == "cite"
                else loader(SHARED_DATA / DATA_FILES[name], min_peak_frac=0.02, n_cells=3000)
            )
            setup = {
                "likelihoods": dataset.likelihoods,
                "layers": dict.fromkeys(dataset.likelihoods, "counts"),
                "batch_key": "batch",
            }
            fit(name, dataset.mdata, setup, 100, n_shared=10, n_private=n_private)


if __name__ == "__main__":
    main(sys.argv[1:] or ["screen", "cll", "tcga", "cite", "mop"])
