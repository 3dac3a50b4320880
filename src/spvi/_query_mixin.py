"""Query mapping (scArches): embed new batches with a trained reference model, reference weights frozen."""

from __future__ import annotations

import os
from copy import deepcopy

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from mudata import MuData
from scvi import REGISTRY_KEYS
from scvi.data._constants import _MODEL_NAME_KEY, _SETUP_ARGS_KEY
from scvi.model._utils import parse_device_args
from scvi.model.base._save_load import _initialize_model, _load_saved_files
from scvi.nn import FCLayers

from spvi._constants import data_key
from spvi._logging import SCVI_LOAD_LINES, no_pull_on_update, quiet_lines, warn

#: Below this fraction of a modality's reference features in the query, :meth:`prepare_query_mudata` warns.
MIN_FEATURE_FRACTION = 0.8


def _reference_attributes(reference_model, device) -> tuple[dict, dict[str, torch.Tensor]]:
    """The saved attributes (with ``registry_`` and ``init_params_``) and parameters of a reference model."""
    if isinstance(reference_model, str | os.PathLike):
        with quiet_lines(SCVI_LOAD_LINES):
            attr_dict, _, state_dict, _ = _load_saved_files(
                os.fspath(reference_model), load_adata=False, map_location=device
            )
        state_dict.pop("pyro_param_store", None)
        return attr_dict, state_dict
    attr_dict = {name: value for name, value in reference_model._get_user_attributes() if name.endswith("_")}
    return deepcopy(attr_dict), deepcopy(reference_model.module.state_dict())


def _reference_features(registry: dict) -> dict[str, pd.Index]:
    """Feature names of each modality of a reference model, in its order."""
    fields = registry["field_registries"]
    return {
        m: pd.Index(fields[data_key(m)]["state_registry"]["column_names"])
        for m in registry[_SETUP_ARGS_KEY]["modalities"]
    }


def _n_cat_list(registry: dict) -> list[int]:
    """Categories of the batch and of each categorical covariate, as :class:`scvi.nn.FCLayers` counts them."""
    fields = registry["field_registries"]
    n_cats = [len(fields[REGISTRY_KEYS.BATCH_KEY]["state_registry"]["categorical_mapping"])]
    cat_covs = fields.get(REGISTRY_KEYS.CAT_COVS_KEY, {}).get("state_registry", {})
    n_cats += list(cat_covs.get("n_cats_per_key", []))
    return [n if n > 1 else 0 for n in n_cats]  # FCLayers gives a covariate with one category no columns


def _pad_features(adata: AnnData, features: pd.Index) -> AnnData:
    """``adata`` with exactly ``features`` in that order; features it lacks are zero columns (all layers)."""
    positions = adata.var_names.get_indexer(features)
    present = positions >= 0

    def columns(matrix):
        if sp.issparse(matrix):
            padded = sp.hstack([sp.csr_matrix(matrix), sp.csr_matrix((matrix.shape[0], 1), dtype=matrix.dtype)])
            return padded.tocsc()[:, np.where(present, positions, matrix.shape[1])].tocsr()
        padded = np.zeros((matrix.shape[0], len(features)), dtype=np.asarray(matrix).dtype)
        padded[:, present] = np.asarray(matrix)[:, positions[present]]
        return padded

    var = adata.var.reindex(features)
    return AnnData(
        X=None if adata.X is None else columns(adata.X),
        obs=adata.obs,
        var=var,
        uns=adata.uns,
        obsm=adata.obsm,
        obsp=adata.obsp,
        layers={name: columns(layer) for name, layer in adata.layers.items()},
    )


class QueryMixin:
    """Query mapping of new data onto a trained reference model (scArches, Lotfollahi et al. 2022).

    As scvi-tools' :class:`~scvi.model.base.ArchesMixin`, for the multimodal, partially paired case: the
    query may have all or only some of the reference's modalities.
    """

    #: set by :meth:`load_query_data`: only the new covariate columns train (see :meth:`spvi.SPVI.train`)
    _reference_frozen: bool = False

    @staticmethod
    def prepare_query_mudata(
        mdata: MuData,
        reference_model,
        return_reference_var_names: bool = False,
        inplace: bool = True,
    ) -> MuData | dict[str, pd.Index] | None:
        """Give each modality of a query exactly the reference model's features, in the reference's order.

        Features the query lacks are added as zeros (in ``.X`` and every layer; they then count as measured
        zeros, as in scvi-tools), features the reference lacks are dropped. Modalities of the query that the
        reference did not model are left alone; reference modalities the query lacks stay absent (the
        model treats them as unmeasured).

        Parameters
        ----------
        mdata
            The query MuData.
        reference_model
            A trained :class:`~spvi.SPVI` or the directory it was saved to (:meth:`save`).
        return_reference_var_names
            Only return the reference's feature names, ``{modality: Index}``.
        inplace
            Change the query's modalities in place (each modality's AnnData object is kept and its
            contents replaced, as :meth:`scvi.model.base.ArchesMixin.prepare_query_anndata` does); otherwise
            return a changed copy.

        Returns
        -------
        ``None`` with ``inplace=True``, else the new MuData; the feature names with
        ``return_reference_var_names=True``.

        Raises
        ------
        ValueError
            A modality of the query shares no feature with the reference.
        """
        attr_dict, _ = _reference_attributes(reference_model, "cpu")
        features = _reference_features(attr_dict["registry_"])
        if return_reference_var_names:
            return features
        if not inplace:
            with no_pull_on_update():
                mdata = mdata.copy()
        for modality, names in features.items():
            if modality not in mdata.mod:
                continue
            adata = mdata.mod[modality]
            n_shared = adata.var_names.isin(names).sum()
            if n_shared == 0:
                raise ValueError(
                    f"modality {modality!r} of the query has none of the reference's {len(names)} features (e.g. "
                    f"{names[:3].tolist()}); call prepare_query_mudata(..., return_reference_var_names=True) to see them"
                )
            if n_shared < MIN_FEATURE_FRACTION * len(names):
                missing = names[~names.isin(adata.var_names)]
                warn(
                    f"modality {modality!r} of the query has {n_shared} of the reference's {len(names)} features; the "
                    f"{len(missing)} missing ones (e.g. {missing[:5].tolist()}) are set to 0, which may embed the "
                    "query poorly"
                )
            if not adata.var_names.equals(names):
                adata._init_as_actual(_pad_features(adata, names))
        with no_pull_on_update():
            mdata.update()
        return None if inplace else mdata

    @classmethod
    def load_query_data(
        cls,
        mdata: MuData | None = None,
        reference_model=None,
        inplace_subset_query_vars: bool = False,
        accelerator: str = "auto",
        device: int | str = "auto",
        freeze_dropout: bool = False,
        adata: MuData | None = None,
    ):
        """A model for a query MuData from a trained reference: scArches architecture surgery.

        The query is registered with the reference's setup; batches (and categories of categorical
        covariates) the reference has not seen are added. Their one-hot columns in every layer that takes
        covariates (the decoders, and the encoders when the reference used ``encode_covariates=True``) are
        new weights, initialised as a new model's are; they are the only trainable parameters. Every
        reference parameter is frozen (no gradient, and :meth:`train` defaults to ``weight_decay=0`` for this
        model so that Adam's L2 term does not shrink them), so ``query_model.train(...)`` fine-tunes only the
        new batches. The running median depth of a ``bernoulli`` modality is a statistic, not a parameter,
        and keeps updating. Without ``encode_covariates`` the encoders ignore the batch, so the query's
        embedding does not change in fine-tuning; only its reconstructions do.

        The query may have all or only some of the reference's modalities (a missing one counts as
        unmeasured for every query cell). Give each modality the reference's features first, e.g. with
        :meth:`prepare_query_mudata`. A query whose batches the reference has all seen has nothing to train:
        embed it with the reference model directly.

        Parameters
        ----------
        mdata
            The query MuData (``batch_key`` and covariate columns as in the reference; a label column may be
            absent: then every cell is unlabelled).
        reference_model
            A trained :class:`~spvi.SPVI` or the directory it was saved to (it is not changed).
        inplace_subset_query_vars
            Subset each query modality in place to the reference's features, in their order (every reference
            feature must be present).
        accelerator, device
            Where to put the model.
        freeze_dropout
            Set the dropout rate of every layer to 0 for the fine-tuning.
        adata
            Alias of ``mdata`` (scvi-tools' name).

        Returns
        -------
        The query model, untrained (``is_trained`` is ``False``), with the reference's weights.
        """
        if adata is not None:
            if mdata is not None:
                raise TypeError("pass the data as mdata= or as adata= (its alias), not both")
            mdata = adata
        if mdata is None or reference_model is None:
            raise ValueError("load_query_data needs the query MuData and reference_model (a model or its directory)")
        _, _, torch_device = parse_device_args(
            accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
        )
        attr_dict, reference_state = _reference_attributes(reference_model, torch_device)
        registry = attr_dict.pop("registry_")
        if registry.get(_MODEL_NAME_KEY, cls.__name__) != cls.__name__:
            raise ValueError(f"reference_model is a {registry[_MODEL_NAME_KEY]}, not a {cls.__name__}")
        if inplace_subset_query_vars:
            for modality, names in _reference_features(registry).items():
                if modality in mdata.mod:
                    mdata.mod[modality]._inplace_subset_var(names)
            with no_pull_on_update():
                mdata.update()
        cls.setup_mudata(mdata, source_registry=registry, extend_categories=True, **registry[_SETUP_ARGS_KEY])
        model = _initialize_model(cls, mdata, registry, attr_dict, None)
        model.to_device(torch_device)
        trainable = model._graft_reference(reference_state, _n_cat_list(registry))
        model._freeze_reference(trainable, freeze_dropout)
        model.is_trained_ = False
        return model

    def _graft_reference(
        self, reference_state: dict[str, torch.Tensor], reference_n_cat_list: list[int]
    ) -> dict[str, torch.Tensor]:
        """Load the reference's parameters, with new covariate columns where the query added categories.

        Returns a ``{parameter name: bool mask}`` of the new (trainable) entries of the layers that grew.
        """
        state = self.module.state_dict()
        trainable = {}
        for name, layers in self.module.named_modules():
            if not isinstance(layers, FCLayers) or not layers.n_cat_list:
                continue  # no covariates in these layers (encoders without encode_covariates)
            for i in range(len(layers.fc_layers)):
                if not layers.inject_into_layer(i):
                    continue
                key = f"{name}.fc_layers.Layer {i}.0.weight"
                # columns: the layer's input, then one one-hot block per covariate; a block grows at its end
                offset = state[key].shape[1] - sum(layers.n_cat_list)
                reference_columns = list(range(offset))  # where each reference column goes
                new_columns = np.zeros(state[key].shape[1], dtype=bool)
                for n_reference, n_query in zip(reference_n_cat_list, layers.n_cat_list, strict=True):
                    reference_columns += range(offset, offset + n_reference)
                    new_columns[offset + n_reference : offset + n_query] = True
                    offset += n_query
                grafted = state[key].clone()
                grafted[:, reference_columns] = reference_state[key].to(grafted.device)
                reference_state[key] = grafted
                trainable[key] = torch.as_tensor(new_columns, device=grafted.device).expand_as(grafted)
        self.module.load_state_dict(reference_state)
        return trainable

    def _freeze_reference(self, trainable: dict[str, torch.Tensor], freeze_dropout: bool) -> None:
        """Only the entries in ``trainable`` get a gradient; every other parameter is frozen."""
        for name, parameter in self.module.named_parameters():
            mask = trainable.get(name)
            parameter.requires_grad = mask is not None and bool(mask.any())
            if parameter.requires_grad:
                parameter.register_hook(lambda grad, mask=mask: grad * mask.to(grad.dtype))
        if freeze_dropout:
            for layer in self.module.modules():
                if isinstance(layer, torch.nn.Dropout):
                    layer.p = 0.0
        self._reference_frozen = True
