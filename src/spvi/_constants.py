"""Registry keys and the names of the keys spvi writes into a user's MuData."""

#: Registry key of the per-cell, per-modality presence mask (``n_obs x n_modalities``, 1 = observed).
PRESENCE_KEY = "presence"
#: ``.obsm`` key of the presence mask in the internal, padded MuData.
PRESENCE_OBSM_KEY = "spvi_presence"
#: Label used for unlabelled cells in the internal label column.
UNLABELED_CATEGORY = "__spvi_unlabeled__"
#: ``.obsm`` key of the shared embedding written by :meth:`spvi.SPVI.write_latents`.
SHARED_OBSM_KEY = "X_spvi_shared"


def data_key(modality: str) -> str:
    """Registry key of a modality's data matrix."""
    return f"X_{modality}"


_NONZERO_SUFFIX = "::nonzero_positions"


def nonzero_key(registry_key: str) -> str:
    """Minibatch key of the positions of a sparse field's non-zero entries in its flattened dense minibatch.

    Set by spvi's in-memory data loader (from the CSR structure); the count likelihoods use it instead of
    searching the dense minibatch for its non-zero entries.
    """
    return f"{registry_key}{_NONZERO_SUFFIX}"


def is_nonzero_key(key: str) -> bool:
    """Whether a minibatch key holds non-zero positions (:func:`nonzero_key`) rather than a per-cell field."""
    return key.endswith(_NONZERO_SUFFIX)


def private_obsm_key(modality: str) -> str:
    """``.obsm`` key of a modality's private embedding written by :meth:`spvi.SPVI.write_latents`."""
    return f"X_spvi_private_{modality}"
