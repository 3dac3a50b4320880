import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

from spvi.datasets import cll, synthetic_gp
from spvi.pp import rank_features_by_association, select_shared_and_other


@pytest.fixture(scope="module")
def cll_mdata() -> md.MuData:
    return cll()


def _labelled_scores(mdata: md.MuData, mod: str, label_key: str, cells=None) -> np.ndarray:
    """Association scores of one modality on its cells (or ``cells``) that have a label."""
    adata = mdata[mod] if cells is None else mdata[mod][mdata[mod].obs_names.isin(cells)]
    labels = mdata.obs.loc[adata.obs_names, label_key]
    has_label = labels.notna().to_numpy()
    return rank_features_by_association(adata.X[has_label], labels[has_label])


def test_rank_matches_anova_and_t_test():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    labels = rng.choice(["a", "b", "c"], size=40)
    expected = stats.f_oneway(*(x[labels == k] for k in ("a", "b", "c"))).statistic
    np.testing.assert_allclose(rank_features_by_association(x, labels), expected)

    binary = labels == "a"
    t = stats.ttest_ind(x[binary], x[~binary]).statistic
    np.testing.assert_allclose(rank_features_by_association(x, binary), t**2)
    np.testing.assert_allclose(rank_features_by_association(sparse.csr_matrix(x), binary), t**2)


def test_rank_ignores_missing_values_and_labels():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 3))
    x[:10, 0] += 2.0
    labels = np.array([0.0] * 15 + [1.0] * 15)
    x[[0, 5, 20], 0] = np.nan
    labels[[3, 25]] = np.nan
    keep = ~np.isnan(x[:, 0]) & ~np.isnan(labels)
    expected = stats.f_oneway(x[keep & (labels == 0), 0], x[keep & (labels == 1), 0]).statistic
    scores = rank_features_by_association(x, labels)
    assert scores[0] == pytest.approx(expected)
    assert np.all(np.isfinite(scores))
    # None as a missing label in an object array behaves like NaN
    object_labels = np.array(["u" if v == 0 else "m" if v == 1 else None for v in labels], dtype=object)
    np.testing.assert_allclose(rank_features_by_association(x, object_labels), scores)


def test_rank_degenerate_features():
    labels = np.array(["a", "a", "a", "b", "b", "b"])
    x = np.column_stack(
        [
            np.full(6, 0.3),  # constant
            [1.0, np.nan, np.nan, np.nan, np.nan, np.nan],  # one observation
            [1.0, np.nan, np.nan, 2.0, np.nan, np.nan],  # one per group: no within-group degrees of freedom
            [1.0, 2.0, np.nan, np.nan, np.nan, np.nan],  # one group only
            np.full(6, np.nan),  # never measured
            [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],  # perfect separation
            [0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
        ]
    )
    scores = rank_features_by_association(x, labels)
    np.testing.assert_array_equal(scores[:5], 0.0)
    assert scores[5] == np.inf
    assert 0 < scores[6] < np.inf
    with pytest.raises(ValueError, match="labels has 5 entries but X has 6 observations"):
        rank_features_by_association(x, labels[:5])


def test_select_cll_top_and_bottom(cll_mdata):
    selected = select_shared_and_other(cll_mdata, "IGHV", n_top=10, n_other=1000, modalities=["rna", "meth"])
    assert list(selected.mod) == ["rna", "meth"]
    for mod in ("rna", "meth"):
        adata = selected[mod]
        assert adata.shape == (cll_mdata[mod].n_obs, 1010)
        assert (adata.obs_names == cll_mdata[mod].obs_names).all()
        np.testing.assert_array_equal(adata.var["is_shared"].to_numpy(), np.arange(1010) < 10)
        scores = _labelled_scores(cll_mdata, mod, "IGHV")
        ranked = np.sort(scores)[::-1]
        np.testing.assert_allclose(adata.var["association"].to_numpy()[:10], ranked[:10])
        np.testing.assert_allclose(adata.var["association"].to_numpy()[10:], ranked[-1000:])
        assert adata.var["association"].iloc[:10].min() > 10 * adata.var["association"].iloc[10:].max()
        original_scores = pd.Series(scores, index=cll_mdata[mod].var_names)
        np.testing.assert_allclose(original_scores[adata.var_names], adata.var["association"])
    # lipoprotein lipase is the classic expression marker of unmutated IGHV
    assert "LPL" in set(selected["rna"].var["symbol"].iloc[:10])
    pd.testing.assert_frame_equal(selected.obs, cll_mdata.obs.loc[selected.obs_names])
    assert selected.uns["source"] == cll_mdata.uns["source"]


def test_select_scales_with_train_statistics(cll_mdata):
    raw = select_shared_and_other(cll_mdata, "IGHV", n_top=5, n_other=20, modalities=["meth"], scale=False)
    scaled = select_shared_and_other(cll_mdata, "IGHV", n_top=5, n_other=20, modalities=["meth"])
    np.testing.assert_allclose(scaled["meth"].X.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(scaled["meth"].X.std(axis=0), 1, atol=1e-5)
    x_raw = raw["meth"].X
    np.testing.assert_allclose(scaled["meth"].var["mean"], x_raw.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(x_raw, cll_mdata["meth"][:, raw["meth"].var_names].X)

    train = cll_mdata.obs_names[::2]
    split = select_shared_and_other(cll_mdata, "IGHV", n_top=5, n_other=20, modalities=["meth"], train_obs=train)
    x = split["meth"].X
    is_train = split["meth"].obs_names.isin(train)
    np.testing.assert_allclose(x[is_train].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x[is_train].std(axis=0), 1, atol=1e-5)
    assert np.abs(x[~is_train].mean(axis=0)).max() > 0.05


def test_select_nan_modality_and_all_other(cll_mdata):
    selected = select_shared_and_other(cll_mdata, "IGHV", n_top=5, n_other=None, modalities=["mut"])
    mut = selected["mut"]
    assert mut.n_vars == 69
    np.testing.assert_array_equal(np.isnan(mut.X), np.isnan(cll_mdata["mut"][:, mut.var_names].X))
    measured_sd = np.nanstd(mut.X, axis=0)
    np.testing.assert_allclose(np.nanmean(mut.X, axis=0), 0, atol=1e-5)
    assert np.all((np.abs(measured_sd - 1) < 1e-5) | (measured_sd == 0))
    scores = _labelled_scores(cll_mdata, "mut", "IGHV")
    np.testing.assert_allclose(mut.var["association"], np.sort(scores)[::-1])


def test_select_ranks_on_train_cells_only(cll_mdata):
    patients = cll_mdata.obs_names.to_numpy()
    first_half, second_half = patients[:100], patients[100:]
    kwargs = {"n_top": 10, "n_other": 100, "modalities": ["rna"]}
    on_first = select_shared_and_other(cll_mdata, "IGHV", train_obs=first_half, **kwargs)
    on_second = select_shared_and_other(cll_mdata, "IGHV", train_obs=second_half, **kwargs)
    top_first = set(on_first["rna"].var_names[:10])
    assert top_first != set(on_second["rna"].var_names[:10])
    np.testing.assert_allclose(
        on_first["rna"].var["association"].to_numpy()[:10],
        np.sort(_labelled_scores(cll_mdata, "rna", "IGHV", cells=first_half))[::-1][:10],
    )
    # the labels of the held-out cells do not influence the selection
    shuffled = cll_mdata.copy()
    held_out = shuffled.obs_names.isin(second_half)
    shuffled.obs.loc[held_out, "IGHV"] = 1.0 - shuffled.obs.loc[held_out, "IGHV"]
    on_shuffled = select_shared_and_other(shuffled, "IGHV", train_obs=first_half, **kwargs)
    assert (on_shuffled["rna"].var_names == on_first["rna"].var_names).all()
    # a boolean mask over obs_names selects the same cells as their names
    on_mask = select_shared_and_other(cll_mdata, "IGHV", train_obs=cll_mdata.obs_names.isin(first_half), **kwargs)
    np.testing.assert_array_equal(on_mask["rna"].X, on_first["rna"].X)


def test_select_leaves_input_unchanged(cll_mdata):
    before_x = cll_mdata["rna"].X.copy()
    before_obs = cll_mdata.obs.copy()
    before_var = cll_mdata["rna"].var.copy()
    selected = select_shared_and_other(cll_mdata, "IGHV", n_top=10, n_other=100, modalities=["rna"])
    selected["rna"].X[:] = 0.0
    selected.obs["IGHV"] = 5.0
    np.testing.assert_array_equal(cll_mdata["rna"].X, before_x)
    pd.testing.assert_frame_equal(cll_mdata.obs, before_obs)
    pd.testing.assert_frame_equal(cll_mdata["rna"].var, before_var)
    assert list(cll_mdata.mod) == ["rna", "meth", "drugs", "mut"]


def test_select_recovers_synthetic_shared_features():
    mdata = synthetic_gp(n_obs=500, n_private_features=100, seed=1)
    selected = select_shared_and_other(mdata, "label", n_top=10, n_other=50)
    for mod in ("m1", "m2"):
        top = selected[mod].var_names[:10]
        assert mdata[mod].var.loc[top, "is_shared"].sum() >= 7
        assert not mdata[mod].var.loc[selected[mod].var_names[10:], "is_shared"].any()


def test_select_errors(cll_mdata):
    with pytest.raises(ValueError, match="label_key 'subtype' is not a column of mdata.obs"):
        select_shared_and_other(cll_mdata, "subtype")
    mutated = cll_mdata.obs_names[cll_mdata.obs["IGHV"] == 1]
    with pytest.raises(ValueError, match="label 'IGHV' has 1 class\\(es\\) among the train cells of modality 'rna'"):
        select_shared_and_other(cll_mdata, "IGHV", modalities=["rna"], train_obs=mutated)
    with pytest.raises(ValueError, match="modality 'mut' has 69 features but n_top \\+ n_other = 10 \\+ 1000"):
        select_shared_and_other(cll_mdata, "IGHV", modalities=["mut"])
    with pytest.raises(ValueError, match="modalities \\['atac'\\] are not in mdata"):
        select_shared_and_other(cll_mdata, "IGHV", modalities=["atac"])
    with pytest.raises(ValueError, match="train_obs holds 1 names that are not in mdata.obs_names"):
        select_shared_and_other(cll_mdata, "IGHV", modalities=["rna"], train_obs=["H045", "nobody"])
    with pytest.raises(ValueError, match="one entry per cell of mdata \\(200\\)"):
        select_shared_and_other(cll_mdata, "IGHV", modalities=["rna"], train_obs=np.ones(10, dtype=bool))
