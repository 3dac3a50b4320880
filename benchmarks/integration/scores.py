"""Metrics of the integration benchmark: scib-metrics on an embedding, kNN label transfer, imputation.

Every embedding is an array over all cells of the data set with ``NaN`` rows for cells that the method did
not embed (a private block of a modality the cell lacks, TOTALVI and protein-only cells); every metric is
computed on the cells whose row is finite.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scib_metrics
from scib_metrics.nearest_neighbors import NeighborsResults
from sklearn.neighbors import NearestNeighbors

from spvi.metrics import knn_accuracy, pearson_per_feature

#: scib-metrics functions averaged into the bio-conservation score (Benchmarker's default bio set)
BIO_METRICS = ["nmi", "ari", "silhouette_label", "isolated_labels", "clisi"]
#: scib-metrics functions averaged into the batch-correction score
BATCH_METRICS = ["ilisi", "kbet", "graph_connectivity", "silhouette_batch"]
#: neighbours used by the label-transfer and availability metrics
N_NEIGHBORS = 15


def finite_rows(z: np.ndarray) -> np.ndarray:
    """Boolean mask of the cells whose embedding has no ``NaN``.

    Parameters
    ----------
    z
        Embedding, cells x dimensions.

    Returns
    -------
    One bool per cell.
    """
    return np.isfinite(z).all(axis=1)


def exact_neighbors(z: np.ndarray, n_neighbors: int) -> NeighborsResults:
    """Exact Euclidean k-nearest-neighbour graph in scib-metrics' format (each cell is its own first neighbour).

    Parameters
    ----------
    z
        Embedding, cells x dimensions (finite).
    n_neighbors
        Neighbours per cell including the cell itself; capped at the number of cells.

    Returns
    -------
    Indices and distances, cells x ``n_neighbors``.
    """
    search = NearestNeighbors(n_neighbors=min(n_neighbors, len(z))).fit(z)
    distances, indices = search.kneighbors(z)
    return NeighborsResults(indices=indices, distances=distances)


def scib_scores(z: np.ndarray, labels: np.ndarray, batches: np.ndarray, fast: bool = False) -> dict[str, float]:
    """scib-metrics bio-conservation and batch-correction scores of one embedding, with their aggregates.

    As in scib-metrics' ``Benchmarker`` (without min-max scaling): k-means NMI and ARI, cell-type silhouette,
    isolated labels and cLISI (90 neighbours) are averaged into ``bio``; iLISI (90 neighbours), kBET per
    label (50), graph connectivity (15) and batch silhouette into ``batch``; ``total = 0.6 bio + 0.4 batch``.
    Batch metrics are ``NaN`` when the cells come from a single batch.

    On 10,000 cells (1-2 CPU cores) the first kBET and batch-silhouette calls of a process take ~45 and ~20 s
    (numba and JAX compilation), later ones ~2 and ~1 s; the other metrics ~7 s together.

    Parameters
    ----------
    z
        Embedding of the cells to score, cells x dimensions (finite).
    labels
        Cell type of each cell.
    batches
        Batch of each cell.
    fast
        Skip kBET and the batch silhouette (``NaN``; ``batch`` is then the mean of iLISI and graph connectivity).

    Returns
    -------
    One value per metric in :data:`BIO_METRICS` and :data:`BATCH_METRICS`, plus ``bio``, ``batch`` and ``total``.
    """
    z = np.asarray(z, dtype=np.float32)
    labels, batches = np.asarray(labels).astype(str), np.asarray(batches).astype(str)
    graph = exact_neighbors(z, 90)
    scores = scib_metrics.nmi_ari_cluster_labels_kmeans(z, labels)
    scores["silhouette_label"] = scib_metrics.silhouette_label(z, labels)
    scores["isolated_labels"] = scib_metrics.isolated_labels(z, labels, batches)
    scores["clisi"] = scib_metrics.clisi_knn(graph, labels)
    if len(np.unique(batches)) > 1:
        scores["ilisi"] = scib_metrics.ilisi_knn(graph, batches)
        scores["graph_connectivity"] = scib_metrics.graph_connectivity(graph.subset_neighbors(15), labels)
    if len(np.unique(batches)) > 1 and not fast:
        scores["kbet"] = scib_metrics.kbet_per_label(graph.subset_neighbors(50), batches, labels)
        scores["silhouette_batch"] = scib_metrics.silhouette_batch(z, labels, batches)
    scores = {name: float(scores.get(name, np.nan)) for name in BIO_METRICS + BATCH_METRICS}
    scores["bio"] = float(np.mean([scores[m] for m in BIO_METRICS]))
    scores["batch"] = float(np.nanmean([scores[m] for m in BATCH_METRICS]))
    scores["total"] = 0.6 * scores["bio"] + 0.4 * scores["batch"]
    return scores


def label_transfer_accuracy(z_reference, y_reference, z_query, y_query) -> tuple[float, int]:
    """kNN (k=15) accuracy of labels transferred from reference cells to query cells.

    Query cells of a cell type absent from the reference cannot be predicted by any embedding and are left
    out (none in the full data sets; it happens in ``--smoke`` subsamples).

    Parameters
    ----------
    z_reference, y_reference
        Embedding and labels of the reference cells.
    z_query, y_query
        Embedding and labels of the query cells.

    Returns
    -------
    Accuracy (``spvi.metrics.knn_accuracy``) and the number of query cells scored.
    """
    y_reference, y_query = np.asarray(y_reference).astype(str), np.asarray(y_query).astype(str)
    seen = np.isin(y_query, y_reference)
    if seen.sum() == 0:
        return float("nan"), 0
    k = min(N_NEIGHBORS, len(y_reference))
    return knn_accuracy(z_reference, y_reference, z_query[seen], y_query[seen], n_neighbors=k), int(seen.sum())


def availability_scores(z: np.ndarray, availability: np.ndarray, groups: list[str]) -> dict[str, float]:
    """How much single-modality cells mix with the other cells, and cell types transferred to them.

    For each availability group (e.g. ``"rna only"``): the mean share of the 15 nearest neighbours (among all
    cells given, the cell itself excluded) that have the same availability, the chance level (the group's share
    of the cells) and their ratio (1 = mixed as if at random, larger = the group forms its own region).

    Parameters
    ----------
    z
        Embedding of the cells with a finite embedding, cells x dimensions.
    availability
        Availability of each cell (``"paired"``, ``"rna only"``, ...).
    groups
        Groups to report.

    Returns
    -------
    ``same_availability_<group>``, ``chance_<group>`` and ``ratio_<group>`` per group (``NaN`` when the group has
    no cells), with spaces in group names replaced by underscores.
    """
    availability = np.asarray(availability).astype(str)
    indices = exact_neighbors(z, N_NEIGHBORS + 1).indices[:, 1:]
    same = availability[indices] == availability[:, None]
    scores = {}
    for group in groups:
        key, members = group.replace(" ", "_"), availability == group
        share = float(same[members].mean()) if members.any() else np.nan
        chance = float(members.mean()) if members.any() else np.nan
        scores |= {f"same_availability_{key}": share, f"chance_{key}": chance, f"ratio_{key}": share / chance}
    return scores


def transfer_scores(z: np.ndarray, labels, availability, groups: list[str]) -> dict[str, float]:
    """Cell types transferred by kNN (k=15) from the paired cells to each single-modality group.

    Parameters
    ----------
    z
        Embedding of the cells with a finite embedding.
    labels
        Cell type of each cell.
    availability
        Availability of each cell; the reference is the ``"paired"`` cells.
    groups
        Query groups.

    Returns
    -------
    ``transfer_accuracy_<group>`` per group (``NaN`` when the group or the reference has no cells).
    """
    labels, availability = np.asarray(labels).astype(str), np.asarray(availability).astype(str)
    reference = availability == "paired"
    scores = {}
    for group in groups:
        query = availability == group
        accuracy = np.nan
        if reference.any() and query.any():
            accuracy, _ = label_transfer_accuracy(z[reference], labels[reference], z[query], labels[query])
        scores[f"transfer_accuracy_{group.replace(' ', '_')}"] = accuracy
    return scores


def embedding_scores(
    z: np.ndarray, obs: pd.DataFrame, train: np.ndarray, groups: list[str], fast: bool = False
) -> dict[str, float]:
    """All metrics of one embedding block, on the cells where it is finite.

    Parameters
    ----------
    z
        Embedding of every cell of the data set (``NaN`` rows for cells not embedded).
    obs
        ``cell_type``, ``batch`` and ``availability`` of every cell.
    train
        Boolean mask of the training cells; the other cells are the held-out ones.
    groups
        Single-modality availability groups to score (empty for fully paired data).
    fast
        Skip the slow scib metrics (:func:`scib_scores`).

    Returns
    -------
    ``n_cells``, the scib scores (:func:`scib_scores`), ``knn_accuracy`` of the held-out cells from the
    training cells, and for each group the availability and transfer scores.
    """
    keep = finite_rows(z)
    z_kept, obs_kept = z[keep], obs[keep]
    labels = obs_kept["cell_type"].to_numpy()
    scores = {"n_cells": int(keep.sum())}
    scores |= scib_scores(z_kept, labels, obs_kept["batch"].to_numpy(), fast)
    reference, query = train[keep], ~train[keep]
    scores["knn_accuracy"], _ = label_transfer_accuracy(
        z_kept[reference], labels[reference], z_kept[query], labels[query]
    )
    if groups:
        scores |= availability_scores(z_kept, obs_kept["availability"].to_numpy(), groups)
        scores |= transfer_scores(z_kept, labels, obs_kept["availability"].to_numpy(), groups)
    return scores


def imputation_scores(observed: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Per-feature Pearson correlation of imputed and observed values, averaged over features.

    Parameters
    ----------
    observed, predicted
        Held-out cells x target features, on the same (log-normalised) scale.

    Returns
    -------
    ``pearson`` (mean over the features where both sides vary), ``n_features`` (how many) and ``n_cells``.
    """
    with np.errstate(all="ignore"):
        r = pearson_per_feature(observed, predicted)
    return {"pearson": float(np.nanmean(r)), "n_features": int(np.isfinite(r).sum()), "n_cells": len(observed)}
