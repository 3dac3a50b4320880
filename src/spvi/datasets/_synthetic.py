"""Toy shared-private data drawn from Gaussian processes (Märtens & Yau 2023)."""

from collections.abc import Sequence

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd

from spvi._logging import no_pull_on_update

_LENGTHSCALE = 1.0
_VARIANCE = 1.0
_JITTER = 1e-6


def _rbf_cholesky(z: np.ndarray) -> np.ndarray:
    """Cholesky factor of the RBF kernel matrix of the rows of ``z`` (with diagonal jitter)."""
    scaled = z / _LENGTHSCALE
    sq_norms = np.sum(scaled**2, axis=1)
    sq_dists = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * scaled @ scaled.T, 0.0)
    kernel = _VARIANCE * np.exp(-0.5 * sq_dists) + _JITTER * np.eye(z.shape[0])
    return np.linalg.cholesky(kernel)


def _gp_features(cholesky: np.ndarray, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """``n_features`` independent GP draws at the points whose kernel has Cholesky factor ``cholesky``."""
    return cholesky @ rng.standard_normal((cholesky.shape[0], n_features))


def _private_feature_counts(n_private_features: int | Sequence[int], modalities: Sequence[str]) -> list[int]:
    """One private feature count per modality, validated."""
    if isinstance(n_private_features, int | np.integer):
        counts = [int(n_private_features)] * len(modalities)
    else:
        counts = [int(n) for n in n_private_features]
        if len(counts) != len(modalities):
            raise ValueError(
                f"n_private_features has {len(counts)} entries but there are {len(modalities)} modalities "
                f"{list(modalities)}: give one count per modality or a single int"
            )
    for mod, count in zip(modalities, counts, strict=True):
        if count < 0:
            raise ValueError(f"n_private_features for modality '{mod}' must be >= 0, got {count}")
    return counts


def synthetic_gp(
    n_obs: int = 1000,
    n_shared_features: int = 10,
    n_private_features: int | Sequence[int] = 250,
    n_latent_shared: int = 2,
    n_latent_private: int = 2,
    noise_sd: float = 0.15,
    modalities: Sequence[str] = ("m1", "m2"),
    seed: int = 0,
) -> md.MuData:
    """Simulate paired modalities with shared and private latent factors from Gaussian processes.

    This is the toy data of Märtens & Yau (2023, arXiv:2403.06338). A shared latent
    ``z_shared ~ Uniform(-2, 2)^n_latent_shared`` drives the first ``n_shared_features`` features of every
    modality and an independent private latent ``z_private[m] ~ Uniform(-2, 2)^n_latent_private`` drives the
    private features of modality ``m``. Each feature is an independent draw of a Gaussian process with an RBF
    kernel (lengthscale 1, variance 1, jitter ``1e-6``) evaluated at the cells' latent positions. Every
    column is then standardised to mean 0 and standard deviation 1, and Gaussian noise with standard
    deviation ``noise_sd`` is added, so each feature has a variance of about ``1 + noise_sd**2``.

    Parameters
    ----------
    n_obs
        Number of cells (all modalities are measured in all cells).
    n_shared_features
        Number of features per modality that depend on the shared latent.
    n_private_features
        Number of features per modality that depend on that modality's private latent: one int for all
        modalities or one int per modality.
    n_latent_shared
        Dimension of the shared latent.
    n_latent_private
        Dimension of each private latent.
    noise_sd
        Standard deviation of the Gaussian noise added after standardisation.
    modalities
        Names of the modalities (at least two, unique).
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same data.

    Returns
    -------
    Fully paired MuData with one dense ``float32`` modality per name in ``modalities``, whose features are
    ``"{mod}_shared_{j}"`` followed by ``"{mod}_private_{j}"`` with ``var["is_shared"]`` marking the shared
    ones. ``obs["label"]`` is the categorical label ``"1"`` where ``z_shared[:, 0] > 0`` else ``"0"``. The true
    latents are in ``obsm["true_z_shared"]`` and ``obsm["true_z_private_{mod}"]``, the parameters in
    ``uns["synthetic_gp"]``.

    Examples
    --------
    >>> mdata = spvi.datasets.synthetic_gp(n_obs=200, n_private_features=[50, 80])
    >>> mdata["m2"].shape
    (200, 90)
    """
    modalities = [str(mod) for mod in modalities]
    if len(modalities) < 2 or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must hold at least two unique names, got {modalities}")
    if n_obs < 2:
        raise ValueError(f"n_obs must be at least 2, got {n_obs}")
    if n_shared_features < 0:
        raise ValueError(f"n_shared_features must be >= 0, got {n_shared_features}")
    if n_latent_shared < 1 or n_latent_private < 1:
        raise ValueError(
            f"n_latent_shared and n_latent_private must be >= 1, got {n_latent_shared} and {n_latent_private}"
        )
    if noise_sd < 0:
        raise ValueError(f"noise_sd must be >= 0, got {noise_sd}")
    private_counts = _private_feature_counts(n_private_features, modalities)

    rng = np.random.default_rng(seed)
    obs_names = pd.Index([f"cell_{i}" for i in range(n_obs)])
    z_shared = rng.uniform(-2.0, 2.0, size=(n_obs, n_latent_shared))
    shared_cholesky = _rbf_cholesky(z_shared)

    adatas = {}
    z_private = {}
    for mod, n_private in zip(modalities, private_counts, strict=True):
        z_private[mod] = rng.uniform(-2.0, 2.0, size=(n_obs, n_latent_private))
        x = np.hstack(
            [
                _gp_features(shared_cholesky, n_shared_features, rng),
                _gp_features(_rbf_cholesky(z_private[mod]), n_private, rng),
            ]
        )
        x = (x - x.mean(axis=0)) / x.std(axis=0)
        x += noise_sd * rng.standard_normal(x.shape)
        var_names = [f"{mod}_shared_{j}" for j in range(n_shared_features)]
        var_names += [f"{mod}_private_{j}" for j in range(n_private)]
        var = pd.DataFrame({"is_shared": [j < n_shared_features for j in range(x.shape[1])]}, index=var_names)
        adatas[mod] = ad.AnnData(X=x.astype(np.float32), obs=pd.DataFrame(index=obs_names), var=var)

    with no_pull_on_update():
        mdata = md.MuData(adatas)
    mdata.obs["label"] = pd.Categorical(np.where(z_shared[:, 0] > 0, "1", "0"), categories=["0", "1"])
    mdata.obsm["true_z_shared"] = z_shared
    for mod in modalities:
        mdata.obsm[f"true_z_private_{mod}"] = z_private[mod]
    mdata.uns["synthetic_gp"] = {
        "n_obs": n_obs,
        "n_shared_features": n_shared_features,
        "n_private_features": private_counts,
        "n_latent_shared": n_latent_shared,
        "n_latent_private": n_latent_private,
        "noise_sd": noise_sd,
        "modalities": modalities,
        "seed": seed,
        "kernel": {"name": "rbf", "lengthscale": _LENGTHSCALE, "variance": _VARIANCE, "jitter": _JITTER},
    }
    return mdata
