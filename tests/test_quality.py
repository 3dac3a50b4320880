"""Quality: the claim of MMVAE++ on the paper's toy data, measured on held-out cells."""

import mudata as md
import numpy as np
import scvi

import spvi


def _subset(mdata: md.MuData, names: np.ndarray) -> md.MuData:
    return md.MuData({m: mdata[m][names].copy() for m in mdata.mod})


def _shared_r2(objective: str, train: md.MuData, test: md.MuData, var: dict) -> float:
    spvi.SPVI.setup_mudata(train)
    scvi.settings.seed = 0
    model = spvi.SPVI(train, n_shared=2, n_private=2, objective=objective)
    model.train(max_epochs=150, lr=1e-3, train_size=1.0, enable_progress_bar=False, enable_checkpointing=False)
    r2 = [
        spvi.tl.cross_modal_r2(model, source, target, test)[var[target]].mean()
        for source, target in [("m1", "m2"), ("m2", "m1")]
    ]
    return float(np.mean(r2))


def test_mmvae_plus_plus_keeps_shared_signal_that_mmvae_loses():
    """10 shared vs 100 private features per modality: the stop-gradient keeps z_shared on the shared factors."""
    mdata = spvi.datasets.synthetic_gp(n_obs=1000, n_shared_features=10, n_private_features=100, seed=0)
    names = np.random.default_rng(0).permutation(mdata.obs_names.to_numpy())
    train, test = _subset(mdata, names[:800]), _subset(mdata, names[800:])
    shared_features = {m: mdata[m].var_names[mdata[m].var["is_shared"].to_numpy()] for m in mdata.mod}
    r2 = {objective: _shared_r2(objective, train, test, shared_features) for objective in ("mmvae++", "mmvae")}
    # measured on CPU with seed 0: MMVAE++ 0.17, MMVAE -0.01
    assert r2["mmvae++"] > 0.1, r2
    assert r2["mmvae++"] > r2["mmvae"] + 0.1, r2
