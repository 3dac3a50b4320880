"""Plots of the analyses in :mod:`spvi.tl` (matplotlib, in the style of ``scanpy.pl``).

Single-panel plots take an optional ``ax`` and return the :class:`~matplotlib.axes.Axes`; multi-panel plots take
optional ``axes`` and return the :class:`~matplotlib.figure.Figure`. Nothing is shown or saved: call
``plt.show()`` or ``fig.savefig(...)`` yourself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData

from spvi import tl
from spvi._model import SPVI

_METRIC_LABELS = {"r2": "R²", "pearson": "Pearson r", "auc": "ROC AUC", "knn_accuracy": "kNN accuracy"}


def _new_axes(n_panels: int, axes, panel_size: tuple[float, float] = (4.0, 3.5)) -> tuple[Figure, list[Axes]]:
    """Figure and a flat list of ``n_panels`` axes: new ones, or the ones passed (checked for their number)."""
    if axes is None:
        n_cols = min(n_panels, 4)
        n_rows = int(np.ceil(n_panels / n_cols))
        fig, grid = plt.subplots(
            n_rows,
            n_cols,
            figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows),
            squeeze=False,
            layout="constrained",
        )
        flat = list(grid.ravel())
        for extra in flat[n_panels:]:
            extra.set_visible(False)
        return fig, flat[:n_panels]
    flat = list(np.ravel(axes))
    if len(flat) != n_panels:
        raise ValueError(f"axes must hold {n_panels} Axes for this plot, got {len(flat)}")
    return flat[0].figure, flat


def _one_axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=size, layout="constrained")
    return ax


def _as_groups(results: pd.DataFrame | Mapping[str, pd.DataFrame], default: str) -> dict[str, pd.DataFrame]:
    if isinstance(results, pd.DataFrame):
        return {default: results}
    if not isinstance(results, Mapping) or not results:
        raise TypeError("expected a DataFrame from spvi.tl or a non-empty dict {name: DataFrame}")
    return dict(results)


# ---------------------------------------------------------------------- variance explained
def variance_explained(
    data: pd.DataFrame | MuData,
    by: str = "block",
    ax: Axes | None = None,
    n_features: int = 20,
    cmap: str = "RdBu_r",
    annotate: bool = True,
) -> Axes:
    """Heatmap of the variance explained: modalities x blocks, latent dimensions x modalities, or top features.

    Parameters
    ----------
    data
        A MuData that :func:`spvi.tl.variance_explained` wrote into, or a table it returned
        (``inplace=False``): ``by="block"``, ``by="dimension"`` or ``per_feature=True`` with blocks, of which the
        ``n_features`` features best explained by both blocks are shown.
    by
        With a MuData: ``"block"`` or ``"dimension"`` (MOFA+'s factor x view heatmap).
    ax
        Axes to draw into (default: a new figure).
    n_features
        Features shown for a per-feature table.
    cmap
        Colour map, centred on 0 (diverging by default, so that negative values show in their own colour).
    annotate
        Write the values into the cells.

    Returns
    -------
    The Axes, with a colour bar.
    """
    blocks = list(tl.BLOCKS)
    if isinstance(data, MuData):
        if by not in ("block", "dimension"):
            raise ValueError(f"by must be 'block' or 'dimension', got {by!r}")
        data = tl.stored(data, "variance_explained" if by == "block" else "variance_explained_dimensions")
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"expected a MuData or a DataFrame from spvi.tl.variance_explained, got {type(data).__name__}")
    if data.index.name == "dimension":
        values, rows, columns = data.to_numpy(dtype=float), [str(i) for i in data.index], [str(c) for c in data.columns]
        row_label, column_label, title = "latent dimension", "modality", "Variance explained per dimension"
    else:
        missing = [b for b in blocks if b not in data.columns]
        if missing:
            raise ValueError(
                f"data must be the output of spvi.tl.variance_explained (columns {blocks}); missing {missing}"
            )
        columns, column_label = ["z_shared", "z_private (added)", "both"], "reconstructed from"
        if "feature" in data.columns:
            top = data.sort_values("shared+private", ascending=False).head(n_features)
            values = top[blocks].to_numpy(dtype=float)
            rows = [f"{m}: {f}" for m, f in zip(top["modality"], top["feature"], strict=True)]
            row_label, title = "feature", f"Variance explained, top {len(rows)} features"
        else:
            values = data[blocks].to_numpy(dtype=float)
            rows = [str(i) for i in data.index]
            row_label, title = "modality", "Variance explained per modality"
    finite = values[np.isfinite(values)]
    limit = float(np.max(np.abs(finite))) if finite.size and np.max(np.abs(finite)) > 0 else 1.0
    ax = _one_axes(ax, (1.8 + 1.3 * len(columns), 1.4 + 0.4 * len(rows)))
    image = ax.imshow(values, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    if annotate:
        for (i, j), value in np.ndenumerate(values):
            colour = "white" if np.isfinite(value) and abs(value) > 0.6 * limit else "black"
            ax.text(j, i, "" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", color=colour)
    ax.set(xlabel=column_label, ylabel=row_label, title=title)
    ax.figure.colorbar(image, ax=ax, label="fraction of deviance explained")
    return ax


# ---------------------------------------------------------------------- feature associations
def feature_associations(
    table: pd.DataFrame | MuData,
    dimensions: Sequence[str] | None = None,
    n_top: int = 10,
    score: str = "correlation",
    axes: Sequence[Axes] | None = None,
    modality: str | None = None,
    kind: str = "shared",
    feature_names: str | None = None,
) -> Figure:
    """Bar chart of the top features of each latent dimension.

    Parameters
    ----------
    table
        A table returned by :func:`spvi.tl.feature_associations` (``inplace=False``), or a MuData it wrote into
        (then ``modality`` and ``kind`` say which scores to read).
    dimensions
        Dimensions to show (default all in ``table``), one panel each.
    n_top
        Features per dimension, the best-ranked ones.
    score
        ``"correlation"`` or ``"gradient"``: the score drawn as bars.
    axes
        One Axes per dimension (default: a new figure).
    modality
        With a MuData: the modality whose features were scored.
    kind
        With a MuData: ``"shared"`` or ``"private"``.
    feature_names
        With a MuData: column of ``mdata[modality].var`` with display names.

    Returns
    -------
    The Figure.
    """
    if score not in ("correlation", "gradient"):
        raise ValueError(f"score must be 'correlation' or 'gradient', got {score!r}")
    if isinstance(table, MuData):
        if modality is None:
            raise ValueError(f"with a MuData, pass modality= one of {list(table.mod)}")
        table = tl.association_table(table, modality, kind=kind, rank_by=score, feature_names=feature_names)
    if not {"dimension", "feature", "rank", score} <= set(table.columns):
        raise ValueError("table must be the output of spvi.tl.feature_associations")
    available = list(pd.unique(table["dimension"]))
    dimensions = available if dimensions is None else list(dimensions)
    unknown = [d for d in dimensions if d not in available]
    if unknown:
        raise ValueError(f"dimensions {unknown} are not in the table; available: {available}")
    fig, flat = _new_axes(len(dimensions), axes, panel_size=(4.0, 0.6 + 0.3 * n_top))
    labels = "name" if "name" in table.columns else "feature"
    for ax, dimension in zip(flat, dimensions, strict=True):
        top = table[table["dimension"] == dimension].sort_values("rank").head(n_top)
        values = top[score].to_numpy(dtype=float)
        colours = np.where(values >= 0, "tab:red", "tab:blue")
        ax.barh(np.arange(len(top)), values, color=colours)
        ax.set_yticks(np.arange(len(top)), top[labels].astype(str))
        ax.invert_yaxis()
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set(
            title=dimension,
            xlabel="correlation with the dimension" if score == "correlation" else "decoder gradient",
            ylabel="feature",
        )
    return fig


# ---------------------------------------------------------------------- cross-modal prediction quality
def prediction_quality(
    results: pd.DataFrame | Mapping[str, pd.DataFrame] | MuData,
    ax: Axes | None = None,
) -> Axes:
    """Distribution over features of the cross-modal prediction quality, one violin per result.

    Parameters
    ----------
    results
        A table returned by :func:`spvi.tl.prediction_quality` (``inplace=False``), ``{name: table}`` to compare
        (e.g. models or directions), or a MuData it wrote into (every stored direction); all must use the same
        metric.
    ax
        Axes to draw into (default: a new figure).

    Returns
    -------
    The Axes; each violin is labelled with its median.
    """
    if isinstance(results, MuData):
        stored = results.uns.get(tl.UNS_KEY, {}).get("prediction_quality")
        if not stored:
            raise ValueError("mdata has no stored prediction quality: run spvi.tl.prediction_quality first")
        results = {name.replace("_to_", " → "): table for name, table in stored.items()}
    first = results if isinstance(results, pd.DataFrame) else next(iter(results.values()), None)
    default = "" if first is None or "source" not in first else f"{first['source'].iloc[0]} → {first['target'].iloc[0]}"
    groups = _as_groups(results, default)
    metrics = {str(m) for frame in groups.values() for m in pd.unique(frame["metric"])}
    if len(metrics) != 1:
        raise ValueError(f"all results must use one metric, got {sorted(metrics)}")
    (metric,) = metrics
    ax = _one_axes(ax, (1.5 + 1.6 * len(groups), 3.5))
    scores = [frame["score"].dropna().to_numpy(dtype=float) for frame in groups.values()]
    empty = [name for name, s in zip(groups, scores, strict=True) if len(s) == 0]
    if empty:
        raise ValueError(f"no finite scores to plot for {empty}")
    positions = np.arange(1, len(groups) + 1)
    ax.violinplot(scores, positions=positions, showmedians=True)
    rng = np.random.default_rng(0)
    for position, values in zip(positions, scores, strict=True):
        ax.scatter(position + rng.uniform(-0.08, 0.08, len(values)), values, s=4, color="black", alpha=0.4)
        ax.annotate(f"median {np.median(values):.2f}", (position, np.max(values)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(positions, list(groups))
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set(xlabel="prediction", ylabel=f"{_METRIC_LABELS[metric]} per feature", title="Cross-modal prediction quality")
    return ax


# ---------------------------------------------------------------------- label association
def label_association(
    results: pd.DataFrame | Mapping[str, pd.DataFrame] | MuData,
    metric: str = "auc",
    ax: Axes | None = None,
    labels_key: str | None = None,
) -> Axes:
    """Bar chart of how well each latent block predicts a label (grouped bars to compare models).

    Parameters
    ----------
    results
        A table returned by :func:`spvi.tl.label_association` (``inplace=False``), ``{model name: table}``, or a
        MuData it wrote into.
    metric
        ``"auc"`` (with the chance level 0.5 drawn) or ``"knn_accuracy"``.
    ax
        Axes to draw into (default: a new figure).
    labels_key
        With a MuData: the label (default: the only one stored).

    Returns
    -------
    The Axes.
    """
    if metric not in ("auc", "knn_accuracy"):
        raise ValueError(f"metric must be 'auc' or 'knn_accuracy', got {metric!r}")
    if isinstance(results, MuData):
        results = tl.stored(results, "label_association", labels_key)
    groups = _as_groups(results, "model")
    blocks = list(dict.fromkeys(block for frame in groups.values() for block in frame.index))
    ax = _one_axes(ax, (1.5 + 0.9 * len(blocks) * len(groups), 3.5))
    width = 0.8 / len(groups)
    for g, (name, frame) in enumerate(groups.items()):
        values = frame[metric].reindex(blocks).to_numpy(dtype=float)
        x = np.arange(len(blocks)) + (g - (len(groups) - 1) / 2) * width
        bars = ax.bar(x, values, width=width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    if metric == "auc":
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--", label="chance")
    ax.set_xticks(np.arange(len(blocks)), blocks)
    ax.set_ylim(0.0, 1.08)
    ax.set(xlabel="latent block", ylabel=f"held-out {_METRIC_LABELS[metric]}", title="Label information per block")
    if len(groups) > 1 or metric == "auc":
        ax.legend(loc="lower right", fontsize=8)
    return ax


# ---------------------------------------------------------------------- training curves
def training_curves(model: SPVI, axes: Sequence[Axes] | None = None) -> Figure:
    """Training curves from ``model.history``: negative ELBO, each modality's reconstruction term, KL, KL weight.

    Validation curves are drawn dashed when the model was trained with validation.

    Parameters
    ----------
    model
        A trained model.
    axes
        Four Axes (default: a new figure).

    Returns
    -------
    The Figure.
    """
    history = tl.training_history(model)
    reconstruction = [f"reconstruction_{m}" for m in model.modalities]
    panels = [
        ("negative ELBO", ["elbo"]),
        ("reconstruction (negative log-likelihood)", reconstruction),
        ("KL divergence", ["kl_local"]),
        ("KL weight", ["kl_weight"]),
    ]
    fig, flat = _new_axes(len(panels), axes, panel_size=(4.0, 3.0))
    for ax, (title, metrics) in zip(flat, panels, strict=True):
        for metric in metrics:
            for split, style in (("train", "-"), ("validation", "--"), ("", "-")):
                curve = history[(history["metric"] == metric) & (history["split"] == split)]
                if curve.empty:
                    continue
                label = metric.removeprefix("reconstruction_") + (f" ({split})" if split else "")
                ax.plot(curve["epoch"], curve["value"], style, label=label)
        ax.set(title=title, xlabel="epoch", ylabel="per-cell value" if title != "KL weight" else "weight")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"Training curves ({model.module.objective_name})")
    return fig


# ---------------------------------------------------------------------- UMAP of the latent blocks
def latent_umap(
    mdata: MuData,
    color: str,
    blocks: Sequence[str] | None = None,
    axes: Sequence[Axes] | None = None,
    size: float | None = None,
    palette: str = "tab10",
) -> Figure:
    """UMAPs of ``z_shared`` and the private blocks side by side, coloured by a column of ``mdata.obs``.

    Parameters
    ----------
    mdata
        MuData with the UMAPs written by :func:`spvi.tl.latent_umap`.
    color
        Column of ``mdata.obs``: categorical (one colour per category, legend) or numeric (colour bar).
    blocks
        Blocks to show, e.g. ``["shared", "private_rna"]`` (default every block with a UMAP).
    axes
        One Axes per block (default: a new figure).
    size
        Marker size (default from the number of cells).
    palette
        Matplotlib colour map for categories (``tab20`` for more than 10).

    Returns
    -------
    The Figure.
    """
    prefix = tl.umap_key("")
    available = [key.removeprefix(prefix) for key in mdata.obsm if key.startswith(prefix)]
    if not available:
        raise ValueError("mdata has no UMAPs of spvi latent blocks: run spvi.tl.latent_umap(model, mdata) first")
    blocks = available if blocks is None else list(blocks)
    unknown = [b for b in blocks if b not in available]
    if unknown:
        raise ValueError(f"no UMAP for block(s) {unknown} in mdata.obsm; available: {available}")
    if color not in mdata.obs:
        raise ValueError(f"color={color!r} is not a column of mdata.obs; available: {list(mdata.obs)}")
    values = mdata.obs[color]
    categorical = not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
    size = size if size is not None else max(2.0, min(30.0, 12000 / mdata.n_obs))
    fig, flat = _new_axes(len(blocks), axes, panel_size=(4.0, 3.8))
    if categorical:
        categories = list(pd.Categorical(values.astype("string").dropna()).categories)
        colours = plt.get_cmap(palette)
    for ax, block in zip(flat, blocks, strict=True):
        umap = np.asarray(mdata.obsm[tl.umap_key(block)])
        rows = np.isfinite(umap).all(axis=1)
        if categorical:
            labels = values.astype("string")
            missing = rows & labels.isna().to_numpy()
            if missing.any():
                ax.scatter(*umap[missing].T, s=size, color="lightgrey", label="NA")
            for i, category in enumerate(categories):
                chosen = rows & (labels == category).fillna(False).to_numpy(dtype=bool)
                ax.scatter(*umap[chosen].T, s=size, color=colours(i % colours.N), label=category)
        else:
            points = ax.scatter(*umap[rows].T, s=size, c=values.to_numpy(dtype=float)[rows], cmap="viridis")
        block_title = "z_shared" if block == "shared" else f"z_private ({block.removeprefix('private_')})"
        ax.set(title=f"{block_title}: {rows.sum()} cells", xlabel="UMAP1", ylabel="UMAP2", xticks=[], yticks=[])
    if categorical:
        flat[-1].legend(title=color, bbox_to_anchor=(1.02, 1.0), loc="upper left", fontsize=8, markerscale=2)
    else:
        fig.colorbar(points, ax=flat[-1], label=color)
    return fig
