"""Property-based checks on random small valid MuData: setup succeeds, training is finite, the input is kept."""

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spvi

LIKELIHOOD_DATA = {
    "gaussian": lambda rng, shape: rng.normal(size=shape),
    "nb": lambda rng, shape: rng.poisson(3.0, size=shape).astype(float),
    "poisson": lambda rng, shape: rng.poisson(1.0, size=shape).astype(float),
    "bernoulli": lambda rng, shape: rng.poisson(0.5, size=shape).astype(float),
}


@st.composite
def random_mudata(draw):
    n_obs = draw(st.integers(12, 40))
    n_modalities = draw(st.integers(2, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    names = [f"cell{i}" for i in range(n_obs)]
    # each cell keeps at least one modality
    presence = rng.random((n_obs, n_modalities)) < draw(st.floats(0.5, 1.0))
    presence[np.arange(n_obs), rng.integers(0, n_modalities, n_obs)] = True
    mods, likelihoods = {}, {}
    for m in range(n_modalities):
        likelihood = draw(st.sampled_from(sorted(LIKELIHOOD_DATA)))
        cells = [n for n, keep in zip(names, presence[:, m], strict=True) if keep]
        x = LIKELIHOOD_DATA[likelihood](rng, (len(cells), draw(st.integers(2, 8))))
        if likelihood == "gaussian" and draw(st.booleans()):
            x[rng.random(x.shape) < 0.2] = np.nan
        x = x.astype(draw(st.sampled_from([np.float32, np.float64])))
        if likelihood != "gaussian" and draw(st.booleans()):
            x = draw(st.sampled_from([sp.csr_matrix, sp.csc_matrix]))(x)
        var = pd.DataFrame(index=[f"m{m}_f{j}" for j in range(x.shape[1])])
        mods[f"m{m}"] = ad.AnnData(X=x, obs=pd.DataFrame(index=cells), var=var)
        likelihoods[f"m{m}"] = likelihood
    mdata = md.MuData(mods)
    mdata.obs["batch"] = rng.choice(["a", "b"], size=mdata.n_obs)
    return mdata, likelihoods


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_mudata(), st.sampled_from(spvi.OBJECTIVES))
def test_random_mudata_trains_with_finite_loss(data, objective):
    mdata, likelihoods = data
    before = {name: _dense(a.X).copy() for name, a in mdata.mod.items()}
    obs_before = mdata.obs.copy()
    spvi.SPVI.setup_mudata(mdata, likelihoods=likelihoods, batch_key="batch")
    model = spvi.SPVI(mdata, n_shared=2, n_private=1, objective=objective)
    model.train(max_epochs=1, batch_size=16, enable_progress_bar=False, enable_checkpointing=False)
    assert np.isfinite(model.history["elbo_train"]["elbo_train"].to_numpy(dtype=float)).all()
    model.write_latents()
    assert mdata.obsm["X_spvi_shared"].shape == (mdata.n_obs, 2)
    assert np.isfinite(mdata.obsm["X_spvi_shared"]).all()
    for name, x in before.items():
        np.testing.assert_array_equal(_dense(mdata[name].X), x)
        present = mdata.obs_names.isin(mdata[name].obs_names)
        assert np.isnan(mdata.obsm[f"X_spvi_private_{name}"][~present]).all()
    assert mdata.obs.equals(obs_before)


def test_latents_survive_h5mu_round_trip(multiome_path, tmp_path):
    mdata = md.read_h5mu(multiome_path)
    spvi.SPVI.setup_mudata(mdata, layers={"rna": "counts", "atac": "counts"})
    model = spvi.SPVI(mdata, n_shared=2, n_private=2)
    model.write_latents()
    mdata.write(tmp_path / "annotated.h5mu")
    again = md.read_h5mu(tmp_path / "annotated.h5mu")
    for key in ("X_spvi_shared", "X_spvi_private_rna", "X_spvi_private_atac"):
        np.testing.assert_array_equal(again.obsm[key], mdata.obsm[key])
