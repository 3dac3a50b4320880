"""Analysis of a trained model against observed data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

from spvi._constants import PRESENCE_OBSM_KEY
from spvi._model import SPVI
from spvi.metrics import r2_per_feature


def cross_modal_r2(
    model: SPVI,
    source: str | Sequence[str],
    target: str,
    mdata: MuData | None = None,
    batch_size: int | None = None,
) -> pd.Series:
    """Per-feature R² of the cross-modal prediction ``source -> target`` against the observed target.

    The paper's yardstick (Märtens & Yau 2023): ``1 - SSR/SST`` per feature of :meth:`spvi.SPVI.predict`
    (posterior means, the target's private block at 0) over the cells that have the source and the target;
    ``NaN`` entries of a Gaussian target are left out. Use it on held-out cells.

    Parameters
    ----------
    model
        A trained model.
    source
        Modality (or modalities) to predict from.
    target
        Modality to predict.
    mdata
        MuData to evaluate on (default: the training data).
    batch_size
        Minibatch size.

    Returns
    -------
    R² per feature of ``target``, indexed by feature name.
    """
    registered = model._validate_anndata(mdata)
    prediction = model.predict(source=source, target=target, mdata=mdata, batch_size=batch_size)
    presence = registered.obsm[PRESENCE_OBSM_KEY].astype(bool)
    columns = model._modality_indices(source, "source") + model._modality_indices(target, "target")
    both = presence[:, columns].all(axis=1)
    observed = registered.mod[target].X[both]
    observed = observed.toarray() if sp.issparse(observed) else np.asarray(observed)
    return pd.Series(r2_per_feature(observed, prediction[both]), index=registered.mod[target].var_names, name="r2")
