"""Denoised values, differential expression and posterior predictive samples of one modality (scvi's RNASeqMixin)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from mudata import MuData
from scvi.data import AnnDataManager
from scvi.model._utils import _get_batch_code_from_category
from scvi.model.base._de_core import _de_core

from spvi._constants import PRESENCE_KEY, data_key
from spvi._data import data_argument
from spvi._likelihoods import GaussianHead

#: Pseudocount of the log fold change per likelihood, on the scale of the values compared: the defaults of
#: TOTALVI for expression frequencies and of MULTIVI for accessibility probabilities, and TOTALVI's protein
#: prior count for protein counts (which are not library-normalised).
DE_PSEUDOCOUNTS = {"nb": 1e-5, "zinb": 1e-5, "poisson": 1e-5, "bernoulli": 1e-6, "nbmixture": 0.1}
#: Temporary ``obs`` column of the internal MuData that holds the user's ``groupby`` column during DE.
_GROUP_KEY = "_spvi_de_group"


class ExpressionMixin:
    """Denoised expression, differential expression and posterior predictive samples of one modality.

    Mixed into :class:`spvi.SPVI`; every method works on one modality at a time (``modality=``).
    """

    def _target_index(self, modality: str | None) -> int:
        """Index of ``modality`` (default the model's first modality)."""
        if modality is None:
            return 0
        if not isinstance(modality, str):
            raise TypeError(f"modality must be the name of one modality {self.modalities}, got {modality!r}")
        (index,) = self._modality_indices([modality], "modality")
        return index

    def _feature_mask(self, var_names: pd.Index, gene_list: Sequence[str] | None, modality: str) -> np.ndarray:
        if gene_list is None:
            return np.ones(len(var_names), dtype=bool)
        gene_list = [gene_list] if isinstance(gene_list, str) else list(gene_list)
        unknown = [name for name in gene_list if name not in var_names]
        if unknown:
            raise ValueError(f"gene_list names features that modality {modality!r} does not have: {unknown[:5]}")
        return np.asarray(var_names.isin(gene_list))

    def _check_library_size(self, target: int, library_size: float | str) -> None:
        if library_size == "latent":
            return
        if not isinstance(library_size, int | float | np.number) or not np.isfinite(library_size) or library_size <= 0:
            raise ValueError(f"library_size must be 'latent' or a positive number, got {library_size!r}")
        if self.module.decoders[target].likelihood.learns_depth and library_size > 1:
            raise ValueError(
                f"modality {self.modalities[target]!r} (bernoulli) scales accessibility by a depth factor in (0, 1]: "
                f"library_size must be at most 1 or 'latent', got {library_size!r}"
            )

    @torch.inference_mode()
    def _denoised_values(
        self,
        registered: MuData,
        indices: Sequence[int] | np.ndarray | None,
        target: int,
        sources: list[int],
        batches: list[int | None],
        library_size: float | str,
        n_samples: int,
        include_background: bool,
        batch_size: int | None,
    ) -> np.ndarray:
        """``(n_samples, n_cells, n_features)`` denoised values of ``target``, averaged over ``batches``."""
        head = self.module.decoders[target].likelihood
        self.module.eval()
        chunks = []
        for tensors in self._make_data_loader(adata=registered, indices=indices, batch_size=batch_size):
            n_obs = tensors[PRESENCE_KEY].shape[0]
            library = None if library_size == "latent" else torch.full((n_obs, 1), float(library_size))
            per_batch = [
                head.denoised_mean(
                    self.module.sample_target_params(tensors, sources, target, n_samples, library, batch),
                    include_background,
                )
                for batch in batches
            ]
            chunks.append(torch.stack(per_batch).mean(dim=0).cpu())
        return torch.cat(chunks, dim=1).numpy()

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        mdata: MuData | None = None,
        indices: Sequence[int] | None = None,
        modality: str | None = None,
        source: str | Sequence[str] | None = None,
        transform_batch: str | Sequence[str] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1,
        n_samples: int = 1,
        include_protein_background: bool = False,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        batch_size: int | None = None,
        adata: MuData | None = None,
    ) -> pd.DataFrame | np.ndarray:
        r"""Denoised values of one modality, decoded at draws from the posterior (scVI's :math:`\rho`).

        For each cell, ``z_shared`` is drawn from the joint posterior of the cell's observed modalities among
        ``source`` (the posterior the objective defines: the mixture of the experts for MMVAE++ and MMVAE, of
        the subsets' products for MoPoE-VAE, the product of experts for MVAE) and the modality's private block
        from its own posterior; the decoder's denoised mean is averaged over ``n_samples`` draws.

        A cell that lacks the modality, or whose modality is not among ``source``, gets its imputation: the
        modality decoded from ``z_shared`` with its private block at its prior mean 0, as :meth:`predict` does.
        The imputation therefore holds what ``z_shared`` carries from the other modalities and none of the
        modality's private variation, which the other modalities cannot inform (the private block's prior mean
        is the value used for cross-modal terms in training with ``cross_modal_private="zero"``).

        Parameters
        ----------
        mdata
            MuData (default: the training data).
        indices
            Cells (positions); default all.
        modality
            The modality to decode (default: the model's first modality).
        source
            Modalities whose posterior ``z_shared`` is drawn from (default all: each cell's observed modalities).
            Cells with none of them get ``NaN`` rows.
        transform_batch
            Decode every cell as if it came from this batch (a category of ``batch_key``); a list averages over
            the batches; ``None`` uses each cell's own batch. Only the decoders see the change (as in scVI).
        gene_list
            Features of the modality to return (default all).
        library_size
            For library-scaled counts (``nb``, ``zinb``, ``poisson``): the library size the normalised
            expression is scaled to (1: frequencies that sum to 1 per cell), or ``"latent"`` for each cell's
            observed library size (the median of the training cells for cells that lack the modality). For
            ``bernoulli`` the depth factor in (0, 1]: 1 gives the probability that a peak is detected open in a
            cell at full depth (the learned per-peak factor included), ``"latent"`` uses each cell's learned
            depth. Not used for ``nbmixture`` (protein counts are not library-scaled, as in totalVI) and
            ``gaussian`` (the mean on the user's scale: the model standardises Gaussian features internally
            and undoes it here).
        n_samples
            Number of posterior draws.
        include_protein_background
            ``nbmixture`` only: add the background component to the foreground (the mixture's mean). By
            default the protein value is the foreground part, ``(1 - pi) * foreground`` (totalVI's default).
        return_mean
            Average over the draws; otherwise return all draws.
        return_numpy
            Return an array instead of a DataFrame. Forced to ``True`` when ``n_samples > 1`` and
            ``return_mean=False``.
        batch_size
            Minibatch size.
        adata
            Alias of ``mdata`` (scvi-tools' name); pass one of the two.

        Returns
        -------
        DataFrame cells x features (``obs_names`` x the modality's ``var_names``), or an array; with
        ``n_samples > 1`` and ``return_mean=False`` an array ``(n_samples, n_cells, n_features)``. Values are
        non-negative for count likelihoods (at most 1 for ``bernoulli``). Zero inflation (``zinb``) is left
        out, as in scVI.
        """
        mdata = data_argument(mdata, adata)
        registered = self._validate_anndata(mdata)
        target = self._target_index(modality)
        sources = self._modality_indices(source, "source")
        self._check_library_size(target, library_size)
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        batches = _get_batch_code_from_category(self.get_anndata_manager(registered, required=True), transform_batch)
        var_names = registered.mod[self.modalities[target]].var_names
        features = self._feature_mask(var_names, gene_list, self.modalities[target])
        values = self._denoised_values(
            registered,
            indices,
            target,
            sources,
            batches,
            library_size,
            n_samples,
            include_protein_background,
            batch_size,
        )[..., features]
        if return_mean or n_samples == 1:
            values = values.mean(axis=0)
        elif return_numpy is False:
            warnings.warn(
                "return_numpy must be True when n_samples > 1 and return_mean=False: returning an array "
                "(n_samples, n_cells, n_features)",
                UserWarning,
                stacklevel=3,
            )
        if return_numpy or values.ndim == 3:
            return values
        return pd.DataFrame(values, index=self._obs_names(registered, indices), columns=var_names[features])

    def _expression_for_de(
        self,
        adata: MuData,
        indices: np.ndarray,
        transform_batch: str | None = None,
        n_samples_overall: int = 5000,
        target: int = 0,
        include_background: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """``(n_samples_overall, n_features)`` denoised values of cells drawn uniformly from ``indices``.

        ``adata`` is the internal (registered) MuData; one posterior draw per sampled cell, as totalVI's DE.
        """
        indices = np.asarray(indices)
        cells = indices[torch.randint(len(indices), (n_samples_overall,)).numpy()]  # torch: scvi.settings.seed
        batches = _get_batch_code_from_category(self.get_anndata_manager(adata, required=True), transform_batch)
        all_modalities = list(range(len(self.modalities)))
        return self._denoised_values(
            adata, cells, target, all_modalities, batches, 1, 1, include_background, batch_size
        )[0]

    @staticmethod
    def _raw_properties(
        adata_manager: AnnDataManager,
        idx1: np.ndarray,
        idx2: np.ndarray,
        target: int,
        modality: str,
        library_normalized: bool,
    ) -> dict[str, np.ndarray]:
        """Raw count statistics of two groups (scVI's columns), from the cells of each group that have the modality."""
        data = adata_manager.get_from_registry(data_key(modality))
        present = np.asarray(adata_manager.get_from_registry(PRESENCE_KEY))[:, target].astype(bool)
        statistics = {}
        for group, idx in (("1", idx1), ("2", idx2)):
            rows = np.flatnonzero(np.asarray(idx).astype(bool) & present)
            block = sp.csr_matrix(data[rows], shape=(len(rows), data.shape[1]), dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):  # a group without the modality: NaN
                statistics[f"raw_mean{group}"] = np.asarray(block.sum(axis=0)).ravel() / len(rows)
                statistics[f"non_zeros_proportion{group}"] = np.asarray((block != 0).sum(axis=0)).ravel() / len(rows)
                normalized = np.full(block.shape[1], np.nan)
                if library_normalized:
                    totals = np.asarray(block.sum(axis=1)).ravel()
                    scaled = sp.diags(1e4 / np.maximum(totals, 1.0)) @ block
                    normalized = np.asarray(scaled.sum(axis=0)).ravel() / len(rows)
                statistics[f"raw_normalized_mean{group}"] = normalized
        names = ("raw_mean", "non_zeros_proportion", "raw_normalized_mean")
        properties = {f"{name}{group}": statistics[f"{name}{group}"] for name in names for group in "12"}
        return properties

    @staticmethod
    def _cells(mdata: MuData, idx: Sequence[int] | Sequence[bool] | np.ndarray | str | None):
        """A cell selection for DE as given (positions or a mask), or a query string evaluated on the user's obs."""
        if isinstance(idx, str):
            return np.asarray(mdata.obs_names.isin(mdata.obs.query(idx).index))
        return idx

    def differential_expression(
        self,
        mdata: MuData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        modality: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        include_protein_background: bool = False,
        pseudocounts: float | None = None,
        adata: MuData | None = None,
        **kwargs,
    ) -> pd.DataFrame:
        r"""Differential expression (or accessibility, or protein abundance) of one modality between groups.

        scvi-tools' Bayesian DE (``'vanilla'`` of Lopez et al. 2018, ``'change'`` of Boyeau et al. 2019) on the
        values of :meth:`get_normalized_expression` (``library_size=1``): posterior draws of the denoised
        values of cells drawn from each group are compared. A cell that lacks the modality takes part through
        its imputation from its other modalities (see :meth:`get_normalized_expression`), so all cells of a
        group count; the raw statistics (``raw_mean1``, ``non_zeros_proportion1``, ``raw_normalized_mean1``,
        ...) are computed from the cells of each group that have the modality only (``NaN`` if none has it).

        Parameters
        ----------
        mdata
            MuData (default: the training data); ``groupby`` and query strings refer to its ``obs``.
        groupby
            Column of ``mdata.obs`` with the groups.
        group1
            Groups to test, each against ``group2`` (default: every group of ``groupby``).
        group2
            The reference group; default the rest of the cells.
        modality
            The modality to test (default: the model's first modality). Gaussian modalities are not supported:
            log fold changes need non-negative values.
        idx1, idx2
            Instead of ``groupby``: the cells of the two groups as positions, a boolean mask or a query string
            on ``mdata.obs``; ``idx2=None`` is the rest of the cells.
        mode
            ``"change"`` (probability that the log fold change is outside ``[-delta, delta]``) or ``"vanilla"``.
        delta
            Threshold on the log2 fold change in ``"change"`` mode.
        batch_size
            Minibatch size.
        all_stats
            Add the raw statistics of the groups.
        batch_correction
            Decode every cell in each batch and average (``True``) instead of in its own batch.
        batchid1, batchid2
            With ``batch_correction``: the batches to decode group 1 and group 2 in (default all).
        fdr_target
            Target of the posterior expected false discovery rate (column ``is_de_fdr_<fdr_target>``).
        silent
            Do not show a progress bar.
        include_protein_background
            ``nbmixture`` only: compare the mixture's mean instead of the foreground (see
            :meth:`get_normalized_expression`).
        pseudocounts
            Added to the values before the log fold change. Default per likelihood: ``1e-5`` for expression
            frequencies (``nb``, ``zinb``, ``poisson``; TOTALVI's value), ``1e-6`` for accessibility
            probabilities (``bernoulli``; MULTIVI's) and ``0.1`` for protein counts (``nbmixture``; TOTALVI's
            protein prior count).
        adata
            Alias of ``mdata`` (scvi-tools' name); pass one of the two.
        **kwargs
            Passed to :meth:`scvi.model.base.DifferentialComputation.get_bayes_factors` (``n_samples_overall``,
            ``test_mode``, ``cred_interval_lvls``, ...).

        Returns
        -------
        DataFrame indexed by feature name with scvi-tools' columns, sorted by ``proba_de`` (``"change"``) or
        ``bayes_factor`` (``"vanilla"``) within each comparison: ``proba_de``, ``proba_not_de``,
        ``bayes_factor``, ``scale1``, ``scale2``, ``pseudocounts``, ``delta``, ``lfc_mean``, ``lfc_median``,
        ``lfc_std``, ``lfc_min``, ``lfc_max``, the raw statistics, ``is_de_fdr_<fdr_target>``, and with
        ``groupby`` ``comparison``, ``group1``, ``group2``.
        """
        mdata = data_argument(mdata, adata)
        user_mdata = self.mdata if mdata is None else mdata
        registered = self._validate_anndata(mdata)
        target = self._target_index(modality)
        name, likelihood = self.modalities[target], self.likelihoods[self.modalities[target]]
        if isinstance(self.module.decoders[target].likelihood, GaussianHead):
            raise ValueError(
                f"differential_expression compares log fold changes of non-negative values; modality {name!r} is "
                "Gaussian (continuous, may be negative): compare get_normalized_expression between the groups instead"
            )
        if groupby is None and idx1 is None:
            raise ValueError("pass groupby= (a column of mdata.obs) or idx1= (the cells of the first group)")
        if groupby is not None and groupby not in user_mdata.obs.columns:
            raise ValueError(f"groupby {groupby!r} is not a column of mdata.obs; available: {list(user_mdata.obs)}")
        adata_manager = self.get_anndata_manager(registered, required=True)
        head = self.module.decoders[target].likelihood
        model_fn = partial(
            self._expression_for_de, target=target, include_background=include_protein_background, batch_size=batch_size
        )
        all_stats_fn = partial(
            self._raw_properties,
            target=target,
            modality=name,
            library_normalized=head.uses_library and not head.learns_depth,
        )
        if idx1 is None and groupby is not None:
            registered.obs[_GROUP_KEY] = user_mdata.obs[groupby].astype("category").cat.remove_unused_categories()
        try:
            result = _de_core(
                adata_manager,
                model_fn,
                None,
                None if idx1 is not None else _GROUP_KEY,
                group1,
                group2,
                self._cells(user_mdata, idx1),
                self._cells(user_mdata, idx2),
                all_stats,
                all_stats_fn,
                registered.mod[name].var_names,
                mode,
                batchid1,
                batchid2,
                delta,
                batch_correction,
                fdr_target,
                silent,
                pseudocounts=DE_PSEUDOCOUNTS[likelihood] if pseudocounts is None else pseudocounts,
                **kwargs,
            )
        finally:
            if _GROUP_KEY in registered.obs:
                del registered.obs[_GROUP_KEY]
        return result

    @torch.inference_mode()
    def posterior_predictive_sample(
        self,
        mdata: MuData | None = None,
        indices: Sequence[int] | None = None,
        modality: str | None = None,
        n_samples: int = 1,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        adata: MuData | None = None,
    ) -> np.ndarray:
        r"""Draws of one modality from the posterior predictive distribution :math:`p(\hat{x} \mid x)`.

        The latents are drawn as in :meth:`get_normalized_expression` (``z_shared`` from the joint posterior
        of the cell's observed modalities, the modality's private block from its posterior) and the data from
        the likelihood. A cell that lacks the modality gets draws of its imputation: the private block at its
        prior mean 0 and the cross-modal dispersion the model learned for predicting the modality from
        ``z_shared`` (``marginal_dispersion``), which stands in for the variation of the unseen private block.

        Parameters
        ----------
        mdata
            MuData (default: the training data).
        indices
            Cells (positions); default all.
        modality
            The modality to sample (default: the model's first modality).
        n_samples
            Draws per cell.
        gene_list
            Features of the modality to return (default all).
        batch_size
            Minibatch size.
        adata
            Alias of ``mdata`` (scvi-tools' name); pass one of the two.

        Returns
        -------
        Array of shape ``(n_cells, n_features)`` for ``n_samples=1``, else ``(n_cells, n_features, n_samples)``
        (as scvi-tools' TOTALVI; its single-modality ``RNASeqMixin`` returns a :class:`sparse.GCXS` array, whose
        conversion costs about 10 s of compilation on first use and saves nothing on dense protein or Gaussian
        data): counts for count likelihoods, 0/1 for ``bernoulli``, values on the user's scale for ``gaussian``.
        """
        mdata = data_argument(mdata, adata)
        registered = self._validate_anndata(mdata)
        target = self._target_index(modality)
        features = self._feature_mask(
            registered.mod[self.modalities[target]].var_names, gene_list, self.modalities[target]
        )
        head = self.module.decoders[target].likelihood
        all_modalities = list(range(len(self.modalities)))
        self.module.eval()
        draws = []
        for tensors in self._make_data_loader(adata=registered, indices=indices, batch_size=batch_size):
            params = self.module.sample_target_params(tensors, all_modalities, target, n_samples)
            draws.append(head.sample(params)[..., features].permute(1, 2, 0).cpu())  # (cells, features, draws)
        draws = torch.cat(draws).numpy()
        return draws[..., 0] if n_samples == 1 else draws
