"""Minibatches cut from tensors held in memory (the fast data path) and the data splitter that uses them.

scvi-tools' :class:`~scvi.dataloaders.AnnDataLoader` reads every minibatch from the registered AnnData
fields: fancy-indexes each SciPy matrix, densifies it, casts it and converts it to a tensor. When the data
are in memory, spvi instead casts every registered field once (dense fields to tensors that share memory
with the arrays where the dtype allows, sparse fields to CSR of the training dtype) and cuts each minibatch
by index. Sparse rows are still cut by SciPy (in C; faster on a CPU than a gather in torch), and a minibatch
also holds the positions of each sparse field's non-zero entries (:func:`spvi._constants.nonzero_key`), known
from the CSR structure, which the count likelihoods would otherwise search for in the dense rows. Otherwise the
minibatches are the same arrays as scvi-tools' (same keys, dtypes and values) and the cells are drawn in the
same order for the same seed, so training gives the same result on either path. Data opened on disk
(``backed``), sparse minibatches (``load_sparse_tensor=True``) and fields of other types keep scvi-tools' loader.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scvi.data import AnnDataManager
from scvi.data._utils import registry_key_to_default_dtype
from scvi.dataloaders import AnnDataLoader, BatchDistributedSampler, DataSplitter
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from spvi._constants import is_nonzero_key, nonzero_key
from spvi._data import is_on_disk


class _CSRRows:
    """A CSR matrix cut into dense minibatch rows, with the positions of their non-zero entries.

    Explicit zeros and duplicate entries are removed first (from a copy: the user's matrix is not changed), so
    the stored entries are exactly the non-zero ones.
    """

    def __init__(self, matrix: sparse.csr_matrix, dtype: np.dtype):
        self.matrix = matrix.astype(dtype, copy=False)
        if not self.matrix.has_canonical_format or (self.matrix.data == 0).any():
            if self.matrix is matrix:  # not already copied by the cast
                self.matrix = matrix.copy()
            self.matrix.sum_duplicates()
            self.matrix.eliminate_zeros()

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense rows ``index`` and the positions of their non-zero entries in the flattened rows."""
        rows = self.matrix[index.numpy()]  # SciPy's row slicing, in C
        row_of_entry = np.repeat(np.arange(rows.shape[0], dtype=np.int64), np.diff(rows.indptr))
        nonzero = torch.from_numpy(row_of_entry * rows.shape[1] + rows.indices)
        return torch.from_numpy(rows.toarray()), nonzero


class RegisteredTensors(Dataset):
    """The registered fields of an AnnData manager as tensors; indexing with a list of positions gives a minibatch.

    Parameters
    ----------
    adata_manager
        Manager of the registered (in-memory) data.
    indices
        Cells of the data set (positions in the registered data); item ``i`` is cell ``indices[i]``.
    """

    def __init__(self, adata_manager: AnnDataManager, indices: np.ndarray):
        self.indices = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        self.fields: dict[str, torch.Tensor | _CSRRows] = {}
        for key in adata_manager.data_registry:
            values, dtype = adata_manager.get_from_registry(key), registry_key_to_default_dtype(key)
            if sparse.issparse(values):
                self.fields[key] = _CSRRows(sparse.csr_matrix(values), dtype)
            else:
                self.fields[key] = torch.from_numpy(np.ascontiguousarray(np.asarray(values).astype(dtype, copy=False)))

    @staticmethod
    def supports(adata_manager: AnnDataManager) -> bool:
        """Whether every registered field is an in-memory NumPy array, DataFrame or SciPy sparse matrix."""
        for key in adata_manager.data_registry:
            values = adata_manager.get_from_registry(key)
            if is_on_disk(values) or not (isinstance(values, np.ndarray) or sparse.issparse(values)):
                return False
        return True

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        index = self.indices[torch.as_tensor(positions, dtype=torch.int64)]
        minibatch = {}
        for key, field in self.fields.items():
            if isinstance(field, _CSRRows):
                minibatch[key], minibatch[nonzero_key(key)] = field.rows(index)
            else:
                minibatch[key] = field[index]
        return minibatch


class InMemoryDataLoader(DataLoader):
    """:class:`~scvi.dataloaders.AnnDataLoader` with minibatches cut from :class:`RegisteredTensors`.

    Takes the arguments of :class:`~scvi.dataloaders.AnnDataLoader` and draws cells in the same order. Use
    :func:`make_data_loader`, which falls back to :class:`~scvi.dataloaders.AnnDataLoader` where this path
    does not apply.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices: np.ndarray | None = None,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        drop_dataset_tail: bool = False,
        distributed_sampler: bool = False,
        **kwargs,
    ):
        indices = np.arange(adata_manager.adata.n_obs) if indices is None else np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        self.indices = indices
        dataset = RegisteredTensors(adata_manager, indices)
        if distributed_sampler:
            sampler = BatchDistributedSampler(
                dataset,
                batch_size=batch_size,
                drop_last=drop_last,
                drop_dataset_tail=drop_dataset_tail,
                shuffle=shuffle,
            )
        else:
            order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            sampler = BatchSampler(order, batch_size=batch_size, drop_last=drop_last)
        # tensors are cut in the main process: worker processes would only add the cost of sending them
        kwargs.pop("num_workers", None)
        kwargs.pop("persistent_workers", None)
        super().__init__(dataset, sampler=sampler, batch_size=None, **kwargs)


def make_data_loader(adata_manager: AnnDataManager, *args, load_sparse_tensor: bool = False, **kwargs) -> DataLoader:
    """The fast :class:`InMemoryDataLoader` where it applies, else scvi-tools' :class:`~scvi.dataloaders.AnnDataLoader`.

    It applies when every registered field is in memory (not ``backed``), no ``sampler``, ``data_and_attributes``
    or ``iter_ndarray`` is asked for and minibatches are dense (``load_sparse_tensor=False``).
    """
    scvi_only = ("sampler", "data_and_attributes", "iter_ndarray")
    if load_sparse_tensor or any(kwargs.get(key) for key in scvi_only) or not RegisteredTensors.supports(adata_manager):
        return AnnDataLoader(adata_manager, *args, load_sparse_tensor=load_sparse_tensor, **kwargs)
    for key in scvi_only:
        kwargs.pop(key, None)
    return InMemoryDataLoader(adata_manager, *args, **kwargs)


def select_cells(minibatch: dict[str, torch.Tensor], cells: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-cell fields of a minibatch at ``cells`` (index or bool mask).

    The positions of sparse fields' non-zero entries index the whole minibatch, so they are left out (the
    likelihoods find them in the selected rows).
    """
    return {key: value[cells] for key, value in minibatch.items() if not is_nonzero_key(key)}


class SPVIDataSplitter(DataSplitter):
    """scvi-tools' :class:`~scvi.dataloaders.DataSplitter` with spvi's data loaders (:func:`make_data_loader`)."""

    data_loader_cls = staticmethod(make_data_loader)
