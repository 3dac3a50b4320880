"""The user-facing model: data registration from MuData, training, embeddings, prediction, save/load."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import version
from typing import Literal

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager, fields
from scvi.data._constants import _SETUP_ARGS_KEY
from scvi.model._utils import get_max_epochs_heuristic
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.model.base._constants import SAVE_KEYS

from spvi._constants import (
    PRESENCE_KEY,
    PRESENCE_OBSM_KEY,
    SHARED_OBSM_KEY,
    UNLABELED_CATEGORY,
    data_key,
    private_obsm_key,
)
from spvi._data import (
    build_registered_mudata,
    check_setup_arguments,
    column_mean_and_scale,
    data_argument,
    row_sums,
)
from spvi._dataloader import SPVIDataSplitter, make_data_loader
from spvi._expression_mixin import ExpressionMixin
from spvi._likelihoods import LIKELIHOODS, GaussianHead
from spvi._logging import (
    LIGHTNING_BANNERS,
    SCVI_LOAD_LINES,
    SCVI_SETUP_LINES,
    no_pull_on_update,
    quiet_lines,
    warn,
    without_dependency_deprecations,
)
from spvi._module import SPVAE
from spvi._objectives import OBJECTIVES
from spvi._query_mixin import QueryMixin
from spvi._trainingplan import RestoreBestState, RNGStateCheckpoint, SPVITrainingPlan
from spvi._vae_mixin import VAEMixin

logger = logging.getLogger(__name__)

#: Mean KL (nats per cell) of a modality encoder's ``z_shared`` posterior from the prior below which the modality
#: counts as contributing nothing to ``z_shared``. Trained on the shipped data sets the encoders have 1.2 (SNARE-seq,
#: 3,000 nuclei, 100 epochs) to 100 (CLL) nats; the collapsed simulated screen of the settings guide 0.005.
_COLLAPSED_SHARED_KL = 0.1
#: Training cells (at most) over which :meth:`SPVI._check_shared_posteriors` averages.
_COLLAPSE_CHECK_CELLS = 2000

LatentKind = Literal["shared", "private", "all"]
#: Version of the save format written by :meth:`SPVI.save`; :meth:`SPVI.load` reads this and older ones.
FORMAT_VERSION = 2


def _saved_format_version(dir_path: str) -> int | None:
    """The save format of a saved model (``None`` if the directory holds no spvi model)."""
    path = os.path.join(dir_path, SAVE_KEYS.MODEL_FNAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved spvi model at {dir_path} ({SAVE_KEYS.MODEL_FNAME} is missing)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return saved.get(SAVE_KEYS.ATTR_DICT_KEY, {}).get("format_version_")


class SPVI(QueryMixin, ExpressionMixin, VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """Shared-private multimodal VAE (MMVAE++ of Märtens & Yau 2023, with MVAE, MMVAE and MoPoE-VAE).

    The latent space is partitioned into ``[z_shared, z_private_1, ..., z_private_M]``: ``z_shared``
    explains variation common to all modalities, each ``z_private_m`` variation of modality ``m`` only.
    With ``objective="mmvae++"`` the joint posterior is a mixture of the modality experts and
    ``z_shared`` learns only from cross-modal reconstructions (its gradient is cut in same-modality
    terms), so strong private variation does not leak into it.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    n_shared
        Dimension of ``z_shared``.
    n_private
        Dimension of each private block: one int for all modalities or ``{modality: int}``.
    objective
        ``"mmvae++"`` (default), ``"mmvae"``, ``"mopoe"`` (MoPoE-VAE) or ``"mvae"``.
    n_hidden
        Width of the hidden layers of every encoder and decoder.
    n_layers
        Number of hidden layers (the paper uses one layer of 128 LeakyReLU units).
    label_weight
        Weight of the label term when ``labels_key`` was given to :meth:`setup_mudata`.
    dropout_rate
        Dropout rate in the hidden layers.
    use_layer_norm
        Layer normalisation in the hidden layers.
    marginal_dispersion
        Learn a separate per-feature dispersion (Gaussian sd, NB inverse dispersion) for cross-modal
        reconstructions, which decode with the target's private block at 0 and so stand in for the
        marginal over that block. ``False`` uses one dispersion for both, as in the paper's reference code.
    cross_modal_private
        What a cross-modal term decodes the target with besides the source's ``z_shared``: ``"zero"``, the
        target's private block at its prior mean 0 (the paper), or ``"posterior"``, a sample of the target's
        own private posterior with its gradient cut. With ``"zero"`` the cross-modal terms also ask
        ``z_shared`` to explain the target's private features, which with few samples and many private
        features it does by memorising samples; ``"posterior"`` removes that incentive. Measured: it helps
        when private features outnumber shared ones about ten to one or more and costs a little otherwise (see
        the "model explained" docs and ``benchmarks/README.md``). Prediction (:meth:`predict`) always sets an
        unobserved target's private block to 0.

    encode_covariates
        Also feed the batch and categorical covariates to the encoders (they always reach the decoders).
    alignment_weight
        Weight of a term that makes the modality experts' posteriors of ``z_shared`` agree on cells measured in
        several modalities (symmetric KL, MULTIVI's ``modality_penalty="Jeffreys"``), so that cells measured in
        one modality land among the paired cells of their kind. It only acts on the shared encoder heads and
        rewards what all modalities can tell, so it keeps MMVAE++'s stop-gradient purpose; 0 switches it off.
    shared_kl_weight
        Factor on the KL divergence of ``z_shared`` in the training loss (on top of the KL warm-up's weight); the
        private blocks keep factor 1. Below 1 it lets ``z_shared`` carry more information than the ELBO pays for
        without also loosening the private blocks (as a smaller ``max_kl_weight`` in :meth:`train` does). 1 (the
        default) trains on the ELBO; :meth:`get_elbo` and the reported KL are always the ELBO's.

    Examples
    --------
    >>> spvi.SPVI.setup_mudata(mdata, modalities=["rna", "atac"], layers={"rna": "counts"},
    ...                        likelihoods={"atac": "bernoulli"})
    >>> model = spvi.SPVI(mdata, n_shared=10, n_private=10)
    >>> model.train(max_epochs=200)
    >>> model.write_latents(mdata)  # mdata.obsm["X_spvi_shared"], mdata.obsm["X_spvi_private_rna"], ...
    >>> atac_from_rna = model.predict(source="rna", target="atac")
    """

    _module_cls = SPVAE
    _training_plan_cls = SPVITrainingPlan
    # minibatches cut from tensors in memory where the data allow (spvi._dataloader), else scvi-tools' loader
    _data_splitter_cls = SPVIDataSplitter
    _data_loader_cls = staticmethod(make_data_loader)
    # user MuData -> the padded MuData registered with scvi-tools (see spvi._data)
    _registered: weakref.WeakKeyDictionary[MuData, MuData] = weakref.WeakKeyDictionary()

    def __init__(
        self,
        mdata: MuData,
        n_shared: int = 10,
        n_private: int | Mapping[str, int] = 10,
        objective: str = "mmvae++",
        n_hidden: int = 128,
        n_layers: int = 1,
        label_weight: float = 1.0,
        dropout_rate: float = 0.0,
        use_layer_norm: bool = False,
        marginal_dispersion: bool = True,
        cross_modal_private: str = "zero",
        encode_covariates: bool = False,
        alignment_weight: float = 1.0,
        shared_kl_weight: float = 1.0,
    ):
        super().__init__(self._registered_mudata(mdata))
        self.mdata = mdata
        setup_args = self.adata_manager.registry[_SETUP_ARGS_KEY]
        self.modalities: list[str] = list(setup_args["modalities"])
        self.likelihoods: dict[str, str] = dict(setup_args["likelihoods"])
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if not isinstance(n_shared, int) or n_shared < 1:
            raise ValueError(f"n_shared must be a positive int, got {n_shared!r}")
        n_private_per_modality = self._private_sizes(n_private)

        labels_key = setup_args["labels_key"]
        self.label_categories: list[str] = []
        if labels_key is not None:
            mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY).categorical_mapping
            self.label_categories = [str(c) for c in mapping if c != UNLABELED_CATEGORY]
        n_cats_per_cov = (
            self.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY).n_cats_per_key
            if REGISTRY_KEYS.CAT_COVS_KEY in self.adata_manager.data_registry
            else None
        )
        self.module = self._module_cls(
            n_input=[self.adata.mod[m].n_vars for m in self.modalities],
            likelihoods=[self.likelihoods[m] for m in self.modalities],
            modalities=self.modalities,
            n_shared=n_shared,
            n_private=[n_private_per_modality[m] for m in self.modalities],
            objective=objective,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_batch=self.summary_stats.n_batch,
            n_cats_per_cov=list(n_cats_per_cov) if n_cats_per_cov is not None else None,
            n_labels=len(self.label_categories),
            label_weight=label_weight,
            dropout_rate=dropout_rate,
            use_layer_norm=use_layer_norm,
            library_median=self._library_medians(),
            marginal_dispersion=marginal_dispersion,
            cross_modal_private=cross_modal_private,
            encode_covariates=encode_covariates,
            alignment_weight=alignment_weight,
            shared_kl_weight=shared_kl_weight,
        )
        self._set_gaussian_feature_statistics()
        self._model_summary_string = (
            f"SPVI ({objective}): modalities {self.modalities} with likelihoods "
            f"{[self.likelihoods[m] for m in self.modalities]}, n_shared={n_shared}, "
            f"n_private={[n_private_per_modality[m] for m in self.modalities]}"
        )
        self.format_version_ = FORMAT_VERSION
        self.init_params_ = self._get_init_params(locals())

    def _private_sizes(self, n_private: int | Mapping[str, int]) -> dict[str, int]:
        sizes = dict.fromkeys(self.modalities, n_private) if isinstance(n_private, int) else dict(n_private)
        if set(sizes) != set(self.modalities):
            raise ValueError(f"n_private must be an int or a dict with one entry per modality {self.modalities}")
        for modality, size in sizes.items():
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"n_private for modality {modality!r} must be an int >= 0, got {size!r}")
        return sizes

    def _set_gaussian_feature_statistics(self) -> None:
        """Per-feature mean and sd of each Gaussian modality over its observed training cells (saved with the model)."""
        presence = self.adata.obsm[PRESENCE_OBSM_KEY].astype(bool)
        for m, modality in enumerate(self.modalities):
            head = self.module.decoders[m].likelihood
            if isinstance(head, GaussianHead):
                head.set_feature_statistics(*column_mean_and_scale(self.adata.mod[modality].X, presence[:, m]))

    def _library_medians(self) -> list[float]:
        """Median library size of the observed cells of each modality (for cells that lack it)."""
        presence = self.adata.obsm[PRESENCE_OBSM_KEY].astype(bool)
        medians = []
        for m, modality in enumerate(self.modalities):
            head = LIKELIHOODS[self.likelihoods[modality]]
            if not head.uses_library or head.learns_depth:
                medians.append(0.5 if head.learns_depth else 1.0)  # a learned depth: a running median in training
                continue
            totals = row_sums(self.adata.mod[modality].X)[presence[:, m]]
            medians.append(float(max(np.median(totals), 1.0)))
        return medians

    # ------------------------------------------------------------------ registration
    @classmethod
    def setup_anndata(cls, adata, **kwargs) -> None:
        """Not supported: spvi models several modalities and needs a MuData (see :meth:`setup_mudata`)."""
        raise TypeError("SPVI needs a MuData with one AnnData per modality: use SPVI.setup_mudata")

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        modalities: Sequence[str] | None = None,
        layers: Mapping[str, str | None] | None = None,
        likelihoods: Mapping[str, str] | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData with spvi.

        Cells may lack some modalities (partial overlap): they are padded internally and marked in a
        presence mask, and every term that involves a missing modality is dropped. The MuData is not
        modified.

        Parameters
        ----------
        mdata
            MuData with one AnnData per modality.
        modalities
            Names of the modalities to model (at least two); default all of ``mdata.mod``.
        layers
            ``{modality: layer}``; modalities not listed (or ``None``) use ``.X``. Count likelihoods need
            raw counts.
        likelihoods
            ``{modality: likelihood}`` with likelihoods ``"nb"``, ``"zinb"``, ``"poisson"``,
            ``"bernoulli"``, ``"nbmixture"``, ``"gaussian"``. Default: ``"nb"`` for integer counts,
            ``"gaussian"`` otherwise.
        batch_key
            Column of ``mdata.obs`` with the batch, injected into encoders and decoders (as in scVI).
        labels_key
            Column of ``mdata.obs`` with a categorical label decoded from ``z_shared`` (semi-supervised);
            ``NaN`` or ``"unknown"`` marks unlabelled cells.
        categorical_covariate_keys
            Further categorical columns of ``mdata.obs`` injected like the batch.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields` (used when loading a model).

        Raises
        ------
        ValueError
            Unknown modality, layer or column; ``inf`` anywhere; ``NaN``, negative or non-integer values
            under a count likelihood; cells without any of the modalities.
        TypeError
            ``mdata`` is not a MuData.
        """
        modalities, layers, likelihoods, covariate_keys = check_setup_arguments(
            mdata,
            modalities,
            layers,
            likelihoods,
            batch_key,
            labels_key,
            categorical_covariate_keys,
            allow_missing_modalities=kwargs.get("source_registry") is not None,
        )
        registered, likelihoods = build_registered_mudata(
            mdata,
            modalities,
            layers,
            likelihoods,
            covariate_keys,
            labels_key,
            feature_order=cls._trained_feature_order(kwargs.get("source_registry"), modalities),
        )
        # the registry keeps the resolved modalities and likelihoods, so a loaded model sees the same ones
        setup_method_args = cls._get_setup_method_args(
            cls=cls,
            mdata=mdata,
            modalities=modalities,
            layers=layers,
            likelihoods=likelihoods,
            batch_key=batch_key,
            labels_key=labels_key,
            categorical_covariate_keys=categorical_covariate_keys,
        )
        data_fields = [
            fields.MuDataLayerField(
                data_key(m), None, mod_key=m, is_count_data=LIKELIHOODS[likelihoods[m]].is_count, mod_required=True
            )
            for m in modalities
        ]
        other_fields = [
            fields.MuDataObsmField(PRESENCE_KEY, PRESENCE_OBSM_KEY),
            fields.MuDataCategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            fields.MuDataCategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
        ]
        if labels_key is not None:
            other_fields.append(
                fields.MuDataLabelsWithUnlabeledObsField(
                    REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category=UNLABELED_CATEGORY
                )
            )
        adata_manager = AnnDataManager(fields=data_fields + other_fields, setup_method_args=setup_method_args)
        with quiet_lines(SCVI_SETUP_LINES):
            adata_manager.register_fields(registered, **kwargs)
        cls.register_manager(adata_manager)
        cls._registered[mdata] = registered

    @staticmethod
    def _trained_feature_order(source_registry: dict | None, modalities: list[str]) -> dict[str, list[str]] | None:
        if source_registry is None:
            return None
        field_registries = source_registry["field_registries"]
        return {m: list(field_registries[data_key(m)]["state_registry"]["column_names"]) for m in modalities}

    @classmethod
    def _registered_mudata(cls, mdata: MuData) -> MuData:
        if not isinstance(mdata, MuData):
            raise TypeError(f"SPVI needs a MuData object, got {type(mdata).__name__}")
        if mdata not in cls._registered:
            raise ValueError("Please set up the MuData with spvi.SPVI.setup_mudata(mdata, ...) first")
        return cls._registered[mdata]

    def _validate_anndata(self, adata: MuData | None = None, copy_if_view: bool = True) -> MuData:
        """The registered (padded) MuData for a user's MuData; new data is checked and padded first."""
        if adata is None or adata is self.adata:
            return super()._validate_anndata(self.adata, copy_if_view=copy_if_view)
        try:
            with quiet_lines(SCVI_SETUP_LINES):  # spvi registers new data itself: no scvi "transfer" line
                if adata not in self._registered:
                    # pad the new MuData and register it with the training data's categories and feature order
                    setup_args = self.adata_manager.registry[_SETUP_ARGS_KEY]
                    self.setup_mudata(adata, source_registry=self.adata_manager.registry, **setup_args)
                    manager = self._get_most_recent_anndata_manager(self._registered[adata])
                    self._register_manager_for_instance(manager)
                return super()._validate_anndata(self._registered[adata], copy_if_view=copy_if_view)
        except ValueError as error:
            if "extend_categories" not in str(error):
                raise
            raise ValueError(
                f"{error} The data has a batch or covariate category the model was not trained on: map it as a "
                "query with SPVI.load_query_data(mdata, model) and train that"
            ) from error

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        n_epochs_kl_warmup: int | None = None,
        n_steps_kl_warmup: int | None = None,
        min_kl_weight: float = 1e-5,
        max_kl_weight: float = 1.0,
        train_size: float | None = None,
        validation_size: float | None = None,
        early_stopping: bool = False,
        early_stopping_monitor: str = "elbo_validation",
        keep_best: bool = False,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the model with scvi-tools' Lightning trainer (GPU when available, progress bar).

        Set ``scvi.settings.seed = <int>`` before creating the model for reproducible results: the same seed,
        data and device give identical latents.

        Parameters
        ----------
        max_epochs
            Number of passes through the training data. Default: scvi-tools' heuristic
            (:func:`scvi.model._utils.get_max_epochs_heuristic`), 400 up to 20,000 cells and
            ``400 * 20000 / n_cells`` above, so that every data set gets about the same number of updates.
        batch_size
            Minibatch size.
        lr
            Adam learning rate.
        n_epochs_kl_warmup
            Epochs over which the KL weight rises linearly from ``min_kl_weight`` to ``max_kl_weight``.
        n_steps_kl_warmup
            The same in minibatch steps (used when ``n_epochs_kl_warmup`` is ``None``). Default when both are
            ``None``: totalVI's rule, ``0.75 * n_cells`` steps (about ``0.75 * batch_size`` epochs once there are
            more cells than ``batch_size``), at most ``max_epochs`` epochs. It does not depend on ``max_epochs``
            otherwise, so training longer does not anneal more slowly.
        min_kl_weight, max_kl_weight
            Start and end of the KL weight.
        train_size
            Fraction of cells used for training; the rest (or ``validation_size``) for validation. Default: all
            cells (1.0) unless something is validated (``early_stopping``, ``keep_best`` or ``validation_size``),
            then 0.9.
        validation_size
            Fraction of cells for validation.
        early_stopping
            Stop when ``early_stopping_monitor`` stops improving (see ``early_stopping_patience`` etc. in
            ``trainer_kwargs``).
        early_stopping_monitor
            Validation metric for ``early_stopping`` and ``keep_best``: ``"elbo_validation"`` (the training
            objective) or ``"cross_modal_nll_validation"``, the negative log-likelihood of each modality
            predicted from the other modalities' ``z_shared`` (what :meth:`predict` does; the same for every
            objective). Stopping on the second did not improve held-out prediction in the benchmarks (its sum
            is dominated by unpredictable private features, and the learned dispersion keeps adapting; see
            the "model explained" docs); it is mainly a diagnostic.
        keep_best
            At the end of training, load the parameters of the epoch with the best ``early_stopping_monitor``
            instead of keeping the last epoch's. Needs a validation set (``train_size < 1``).
        accelerator, devices
            Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``) and devices.
        plan_kwargs
            Further arguments of :class:`scvi.train.TrainingPlan` (override the ones above).
        **trainer_kwargs
            Further arguments of :meth:`scvi.model.base.UnsupervisedTrainingMixin.train` and
            :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar=False``, ``strategy``, ``precision``,
            ``load_sparse_tensor``).

        Notes
        -----
        Large data sets, GPUs and several devices:

        - Data in memory are cast once to the tensors training needs and minibatches are cut from them by index
          (:mod:`spvi._dataloader`; the same minibatches and cell order as scvi-tools' ``AnnDataLoader``, so the
          same result). Sparse data stay sparse: each minibatch densifies only its own rows.
          ``load_sparse_tensor=True`` sends minibatches to the GPU as sparse tensors and densifies them there.
        - Count likelihoods evaluate their zero-count terms on the non-zero entries only, and Adam runs fused;
          ``torch.compile`` was tried on a training step and not faster on a CPU (see ``benchmarks/speed``).
        - Out of core: open the data with ``mudata.read_h5mu(path, backed=True)`` and train as usual; ``.X``
          of each modality (CSR or dense) is read from disk minibatch by minibatch. A backed modality that
          lacks some cells is loaded into memory to be padded (with a warning).
        - Several GPUs or CPU processes: ``accelerator="gpu", devices=4, strategy="ddp"`` (from a script; in a
          notebook use ``strategy="ddp_notebook"``). Each process trains on its share of every epoch's
          minibatches (``batch_size`` is per process).
        - Mixed precision: ``precision="bf16-mixed"`` is passed to Lightning; at the default sizes training is
          bound by per-step overhead rather than arithmetic and was not faster on an H100 (see
          ``benchmarks/speed``).

        Resuming: with ``enable_checkpointing=True`` (which needs a validation set, ``train_size < 1``, as
        scvi-tools' checkpoint callback monitors the validation loss) checkpoints are written;
        ``train(..., ckpt_path=path)`` on a new model with the same seed resumes from one. The random number
        generators are saved in the checkpoint, so with the same training arguments (``max_epochs`` sets the
        default KL warm-up) the resumed run gives the same parameters as an uninterrupted one (tested on CPU;
        without the saved generators the minibatch order and the sampling noise after the restart differ).
        ``history`` then holds only the resumed epochs.

        After training it warns when a modality's encoder leaves ``z_shared`` at the prior for every cell (mean KL
        below 0.1 nats over up to 2,000 training cells): nothing of that modality reaches ``z_shared``.

        Lightning's start-up lines ("GPU available", "TPU available", "HPU available", "LOCAL_RANK", tips)
        are not shown; ``logging.getLogger("spvi").setLevel(logging.DEBUG)`` shows them again. A model from
        :meth:`load_query_data` trains with ``weight_decay=0`` unless ``plan_kwargs`` say otherwise.
        """
        n_cells = self.adata.n_obs
        if max_epochs is None:
            max_epochs = get_max_epochs_heuristic(n_cells)
        if train_size is None:
            validated = early_stopping or keep_best or validation_size
            train_size = (1.0 - validation_size if validation_size else 0.9) if validated else 1.0
        steps_per_epoch = math.ceil(train_size * n_cells / batch_size)
        if n_epochs_kl_warmup is None and n_steps_kl_warmup is None:
            n_steps_kl_warmup = min(int(0.75 * n_cells), max_epochs * steps_per_epoch)
        # Lightning warns on every fit when an epoch has fewer minibatches than its logging interval (10)
        trainer_kwargs.setdefault("log_every_n_steps", max(1, min(10, steps_per_epoch)))
        plan_kwargs = {
            "lr": lr,
            "n_epochs_kl_warmup": n_epochs_kl_warmup,
            "n_steps_kl_warmup": n_steps_kl_warmup,
            "min_kl_weight": min_kl_weight,
            "max_kl_weight": max_kl_weight,
            **({"weight_decay": 0.0} if self._reference_frozen else {}),
            **(plan_kwargs or {}),
        }
        trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), RNGStateCheckpoint()]
        if keep_best:
            if train_size >= 1.0 and not validation_size:
                raise ValueError("keep_best needs a validation set: set train_size < 1 or validation_size")
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
            trainer_kwargs["callbacks"] = [
                *trainer_kwargs.get("callbacks", []),
                RestoreBestState(early_stopping_monitor),
            ]
        # Lightning keeps each submodule's mode, and inference (and scvi-tools at the end of training) leaves the
        # module in eval mode: a second call to train, or training a loaded or query model, would otherwise run in
        # eval mode (no dropout, no running depth median, validation-only diagnostics on every step)
        self.module.train()
        with quiet_lines(LIGHTNING_BANNERS), without_dependency_deprecations():
            super().train(
                max_epochs=max_epochs,
                batch_size=batch_size,
                train_size=train_size,
                validation_size=validation_size,
                early_stopping=early_stopping,
                early_stopping_monitor=early_stopping_monitor,
                accelerator=accelerator,
                devices=devices,
                plan_kwargs=plan_kwargs,
                **trainer_kwargs,
            )
        self._check_shared_posteriors()

    def _check_shared_posteriors(self) -> None:
        """Warn when a modality's encoder leaves ``z_shared`` at the prior for every cell (a silent bad fit).

        :meth:`_mean_shared_kl` over (up to :data:`_COLLAPSE_CHECK_CELLS`) training cells; below
        :data:`_COLLAPSED_SHARED_KL` the modality contributes nothing to ``z_shared``, and predictions from it are
        the same for every cell.
        """
        cells = np.arange(self.adata.n_obs) if self.train_indices is None else np.asarray(self.train_indices)
        if len(cells) > _COLLAPSE_CHECK_CELLS:
            cells = np.sort(np.random.default_rng(0).choice(cells, _COLLAPSE_CHECK_CELLS, replace=False))
        collapsed = [
            (name, kl) for name, kl in self._mean_shared_kl(indices=cells).items() if kl < _COLLAPSED_SHARED_KL
        ]
        if collapsed:
            names = ", ".join(f"{name!r} (mean KL {kl:.3f} nats)" for name, kl in collapsed)
            warn(
                f"z_shared is at its prior for every cell in the encoder of {names}; models that use it have several "
                "nats. The model found nothing in these modalities that it shares with the others, so z_shared and "
                "predict(source=...) from them carry none of it. Train longer if the run was short; if the "
                "modalities do share a sparse, strong signal (e.g. guide counts of a CRISPR screen), "
                "alignment_weight=0 and shared_kl_weight=0.1 were measured to help (settings guide, 'Guide counts')."
            )

    def _mean_shared_kl(
        self, mdata: MuData | None = None, indices: Sequence[int] | None = None, batch_size: int | None = None
    ) -> dict[str, float]:
        """Per modality, the mean over the cells that have it of KL(q_m(z_shared | x_m) || N(0, I)) in nats.

        How much each modality's encoder puts into ``z_shared`` (0: the prior for every cell). Modalities no cell
        has are left out.
        """
        kl_sum = torch.zeros(len(self.modalities), dtype=torch.float64)
        n_cells = torch.zeros_like(kl_sum)
        with torch.inference_mode():
            for tensors in self._minibatches(mdata, indices, batch_size):
                inference_outputs = self.module.inference(**self.module._get_inference_input(tensors))
                presence = inference_outputs["presence"].cpu()
                kl = SPVAE.shared_expert_kl(inference_outputs["qz_shared"]).double().cpu()
                kl_sum += torch.where(presence, kl, torch.zeros_like(kl)).sum(dim=0)
                n_cells += presence.sum(dim=0)
        return {
            name: total / count
            for name, total, count in zip(self.modalities, kl_sum.tolist(), n_cells.tolist(), strict=True)
            if count > 0
        }

    # ------------------------------------------------------------------ inference helpers
    def _minibatches(
        self, mdata: MuData | None, indices: Sequence[int] | None, batch_size: int | None
    ) -> Iterator[dict[str, torch.Tensor]]:
        registered = self._validate_anndata(mdata)
        self.module.eval()
        yield from self._make_data_loader(adata=registered, indices=indices, batch_size=batch_size)

    def _modality_indices(self, names: str | Sequence[str] | None, argument: str) -> list[int]:
        if names is None:
            return list(range(len(self.modalities)))
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.modalities]
        if unknown or not names:
            raise ValueError(f"{argument} must name modalities the model was trained on {self.modalities}, got {names}")
        return [self.modalities.index(n) for n in names]

    @torch.inference_mode()
    def get_latent_representation(
        self,
        mdata: MuData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        return_dist: bool = False,
        kind: LatentKind = "shared",
        modality: str | Sequence[str] | None = None,
        adata: MuData | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Latent representation: posterior means (default), samples, or means and variances.

        The joint posterior of ``z_shared`` is the uniform mixture of the objective's components that a cell's
        observed modalities allow (MMVAE and MMVAE++: one expert per modality; MoPoE-VAE: the product of
        experts of every subset; MVAE: one product of experts). Its mean is the average of the components'
        means, its variance the average component variance plus the variance of the component means. The
        private blocks have Gaussian posteriors.

        Parameters
        ----------
        mdata
            MuData to embed (default: the training data). New data needs the training features of the
            modalities it has (in any order); a training modality it lacks is treated as unobserved.
        indices
            Cells to embed (positions); default all.
        give_mean
            ``True``: the posterior mean. ``False``: one sample per cell from the posterior (for the mixture,
            a uniformly chosen valid component, then a sample of it). Ignored when ``return_dist=True``.
        batch_size
            Minibatch size (default: scvi-tools' ``scvi.settings.batch_size``).
        return_dist
            Return the posterior's mean and variance (two arrays) instead of one array (scvi-tools' convention).
        kind
            ``"shared"``: ``z_shared`` (n_obs x n_shared) from the joint posterior of the cell's observed
            modalities, or only from ``modality`` when given. ``"private"``: ``z_private`` of ``modality``
            (``NaN`` rows for cells that lack it). ``"all"``: ``[z_shared, z_private_1, ..., z_private_M]``.
        modality
            For ``"shared"``: modalities to encode from (default all); for ``"private"``: the modality.
        adata
            Alias of ``mdata`` (scvi-tools' name); pass one of the two.

        Returns
        -------
        ``n_obs x n_latent`` array, or the tuple ``(mean, variance)`` of such arrays when ``return_dist``.
        """
        mdata = data_argument(mdata, adata)
        if kind not in ("shared", "private", "all"):
            raise ValueError(f"kind must be 'shared', 'private' or 'all', got {kind!r}")
        if kind == "private" and not isinstance(modality, str):
            raise ValueError(f"kind='private' needs modality= one of {self.modalities}")
        sources = self._modality_indices(modality, "modality")

        def assemble(shared: torch.Tensor, private: list[torch.Tensor]) -> torch.Tensor:
            if kind == "shared":
                return shared
            if kind == "private":
                return private[sources[0]]
            return torch.cat([shared, *private], dim=1)

        sample = not (give_mean or return_dist)
        means, variances, samples = [], [], []
        for tensors in self._minibatches(mdata, indices, batch_size):
            outputs = self.module.inference(**self.module._get_inference_input(tensors))
            presence, qz_shared, qz_private = outputs["presence"], outputs["qz_shared"], outputs["qz_private"]
            observed = self.module.observed_sources(presence, sources)

            def private(values: list[torch.Tensor], presence=presence) -> list[torch.Tensor]:
                return [v.masked_fill(~presence[:, m : m + 1], float("nan")) for m, v in enumerate(values)]

            if sample:
                shared_sample = self.module.sample_shared_posterior(qz_shared, observed, 1)[0]
                samples.append(assemble(shared_sample, private([q.sample() for q in qz_private])))
                continue
            mean, variance = self.module.shared_posterior_moments(qz_shared, observed)
            means.append(assemble(mean, private([q.loc for q in qz_private])))
            if return_dist:
                variances.append(assemble(variance, private([q.scale.square() for q in qz_private])))
        if return_dist:
            return torch.cat(means).cpu().numpy(), torch.cat(variances).cpu().numpy()
        return torch.cat(samples if sample else means).cpu().numpy()

    def write_latents(
        self, mdata: MuData | None = None, batch_size: int | None = None, adata: MuData | None = None
    ) -> None:
        """Write the embeddings into ``mdata.obsm`` for scanpy.

        Adds ``mdata.obsm["X_spvi_shared"]`` and ``mdata.obsm["X_spvi_private_<modality>"]`` for every
        modality (``NaN`` rows for cells that lack the modality) and nothing else.

        Parameters
        ----------
        mdata
            MuData to embed and write into (default: the training MuData).
        batch_size
            Minibatch size.
        adata
            Alias of ``mdata``.
        """
        mdata = data_argument(mdata, adata)
        mdata = self.mdata if mdata is None else mdata
        latent = self.get_latent_representation(mdata, kind="all", batch_size=batch_size)
        blocks = np.split(latent, np.cumsum([self.module.n_shared, *self.module.n_private])[:-1], axis=1)
        mdata.obsm[SHARED_OBSM_KEY] = blocks[0]
        for modality, private in zip(self.modalities, blocks[1:], strict=True):
            mdata.obsm[private_obsm_key(modality)] = private

    @torch.inference_mode()
    def predict(
        self,
        source: str | Sequence[str],
        target: str,
        mdata: MuData | None = None,
        library_size: float | Sequence[float] | np.ndarray | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_numpy: bool = False,
        adata: MuData | None = None,
    ) -> pd.DataFrame | np.ndarray:
        """Cross-modal prediction: expected value of ``target`` from ``source`` alone.

        ``z_shared`` is the posterior mean from the source modalities; the target's private block is
        set to its prior mean 0 (unless the target is itself a source). Cells that lack every source
        get ``NaN`` rows.

        Parameters
        ----------
        source
            Modality (or modalities) to predict from.
        target
            Modality to predict.
        mdata
            MuData to predict for (default: the training data).
        library_size
            For library-scaled count likelihoods (``nb``, ``zinb``, ``poisson``): the library size to
            predict at, a scalar or one value per cell. Default: the target's observed library size where
            the cell has the target, else the median library size of the training cells. For ``bernoulli``
            the depth factor in (0, 1] (default: the learned depth of the cell, else the typical depth).
        indices
            Cells (positions); default all.
        batch_size
            Minibatch size.
        return_numpy
            Return a bare array instead of a DataFrame.
        adata
            Alias of ``mdata``.

        Returns
        -------
        ``n_cells x n_features(target)`` DataFrame on the data scale, indexed by cell name with the target's
        feature names as columns (an array with ``return_numpy=True``): expected counts for count
        likelihoods, the probability of a non-zero count for ``bernoulli``, the mean for ``gaussian``.
        """
        mdata = data_argument(mdata, adata)
        sources = self._modality_indices(source, "source")
        (target_index,) = self._modality_indices([target] if isinstance(target, str) else target, "target")
        library_override = None
        if library_size is not None:
            library_override = torch.as_tensor(np.asarray(library_size, dtype=np.float32).reshape(-1, 1))
        predictions, start = [], 0
        for tensors in self._minibatches(mdata, indices, batch_size):
            n_obs = tensors[PRESENCE_KEY].shape[0]
            library = None
            if library_override is not None:
                many = len(library_override) > 1
                library = library_override[start : start + n_obs] if many else library_override.expand(n_obs, 1)
            predictions.append(self.module.predict_target(tensors, sources, target_index, library).cpu())
            start += n_obs
        prediction = torch.cat(predictions).numpy()
        if return_numpy:
            return prediction
        registered = self._validate_anndata(mdata)
        return pd.DataFrame(
            prediction, index=self._obs_names(registered, indices), columns=registered.mod[target].var_names.copy()
        )

    @staticmethod
    def _obs_names(registered: MuData, indices: Sequence[int] | None) -> pd.Index:
        return registered.obs_names if indices is None else registered.obs_names[np.asarray(indices)]

    @torch.inference_mode()
    def predict_labels(
        self,
        mdata: MuData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        adata: MuData | None = None,
    ) -> pd.DataFrame:
        """Class probabilities of the label head (semi-supervised model) at the posterior mean of ``z_shared``.

        Parameters
        ----------
        mdata
            MuData (default: the training data).
        indices
            Cells (positions); default all.
        batch_size
            Minibatch size.
        adata
            Alias of ``mdata``.

        Returns
        -------
        DataFrame ``n_cells x n_classes`` indexed by cell name, one column per label category.
        """
        mdata = data_argument(mdata, adata)
        if self.module.classifier is None:
            raise ValueError("the model has no label head: pass labels_key= to SPVI.setup_mudata")
        registered = self._validate_anndata(mdata)
        probabilities = torch.cat(
            [self.module.predict_labels(tensors).cpu() for tensors in self._minibatches(mdata, indices, batch_size)]
        ).numpy()
        return pd.DataFrame(probabilities, index=self._obs_names(registered, indices), columns=self.label_categories)

    # ------------------------------------------------------------------ persistence
    def save(
        self,
        dir_path: str,
        overwrite: bool = False,
        save_mudata: bool = False,
        save_kwargs: dict | None = None,
        save_anndata: bool | None = None,
    ) -> None:
        """Save the model (and optionally the training MuData) to a directory, atomically.

        The files are written to a temporary directory beside ``dir_path`` and renamed into place when
        complete; with ``overwrite=True`` the previous directory is renamed aside first and deleted last. A
        save interrupted while writing (an error, ``kill -9``, a full disk) leaves the previous model and no
        half-written one; only between the two renames (microseconds) is ``dir_path`` briefly absent, and then
        the previous model is whole under ``.spvi-old-*`` beside it.

        Parameters
        ----------
        dir_path
            Directory to create.
        overwrite
            Replace an existing directory; otherwise an existing ``dir_path`` is an error.
        save_mudata
            Also write the training MuData as ``mdata.h5mu`` (then :meth:`load` needs no MuData).
        save_kwargs
            Keyword arguments of :func:`torch.save`.
        save_anndata
            Alias of ``save_mudata`` (scvi-tools' name, used by its checkpoint callback).
        """
        if save_anndata is not None:
            save_mudata = save_anndata
        dir_path = os.path.abspath(dir_path)
        if os.path.exists(dir_path) and not overwrite:
            raise FileExistsError(f"{dir_path} already exists; pass overwrite=True to replace it")
        parent = os.path.dirname(dir_path)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".spvi-save-", dir=parent)
        try:
            super().save(staging, overwrite=True, save_anndata=False, save_kwargs=save_kwargs)
            if save_mudata:
                with no_pull_on_update():
                    self.mdata.write(os.path.join(staging, "mdata.h5mu"))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        previous = None
        if os.path.exists(dir_path):
            previous = tempfile.mkdtemp(prefix=".spvi-old-", dir=parent)
            os.replace(dir_path, previous)  # replaces the empty directory just made
        os.replace(staging, dir_path)
        if previous is not None:
            shutil.rmtree(previous)

    @classmethod
    def load(
        cls,
        dir_path: str,
        mdata: MuData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        adata: MuData | None = None,
    ) -> SPVI:
        """Load a saved model.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        mdata
            MuData with the modalities (and features) the model was trained on; features in another
            order are reordered, missing features are an error. Default: the MuData saved with the model.
        accelerator, device
            Where to put the model.
        adata
            Alias of ``mdata`` (scvi-tools' name).
        """
        mdata = data_argument(mdata, adata)
        saved_version = _saved_format_version(dir_path)
        if saved_version is None or saved_version > FORMAT_VERSION:
            raise ValueError(
                f"{dir_path} holds a model of save format {saved_version}; this spvi {version('spvi')} reads "
                f"formats 1 to {FORMAT_VERSION}"
            )
        if mdata is None and not os.path.exists(os.path.join(dir_path, "mdata.h5mu")):
            raise ValueError(f"{dir_path} holds no saved MuData (save_mudata=False): pass the MuData to SPVI.load")
        with quiet_lines(SCVI_LOAD_LINES), without_dependency_deprecations(), no_pull_on_update():
            return super().load(dir_path, adata=mdata, accelerator=accelerator, device=device)
