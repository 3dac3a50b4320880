"""The four objectives as lists of ELBO terms.

All objectives share encoders, decoders and likelihoods. An objective is a list of :class:`Term`: each
term builds a posterior over ``z_shared`` from some modalities (the *experts*), samples it, decodes some
*target* modalities from it and pays the KL of the latent blocks it used. The objectives differ only in
which terms they sum, whether the terms are averaged (a mixture of the term posteriors) or added, and
whether ``z_shared`` is detached when an expert reconstructs its own modality.

Modalities are referred to by their index ``0 .. M-1``. A term is used for a cell only when all its
experts are observed in that cell (``experts=None``: all of the cell's observed modalities); a target is
used only when it is observed. The private block of a target is sampled from the target's own encoder
when the target is one of the term's experts and is set to its prior mean 0 otherwise (cross-modal
terms decode from ``z_shared`` alone, as in the reference implementation of MMVAE++).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations


@dataclass(frozen=True)
class Term:
    """One ELBO term.

    Attributes
    ----------
    experts
        Indices of the modalities whose encoders form the posterior of ``z_shared``; ``None`` means all
        modalities observed in the cell.
    product
        ``True``: product of the experts' Gaussians and the prior ``N(0, I)`` (MVAE, MoPoE-VAE).
        ``False``: the single expert's posterior itself (``experts`` has one element; MMVAE, MMVAE++).
    targets
        Indices of the modalities reconstructed by this term; ``None`` means all modalities.
    stop_gradient
        Detach ``z_shared`` when decoding a target that is one of the term's own experts, so the shared
        encoder heads learn from cross-modal terms only (MMVAE++).
    """

    experts: tuple[int, ...] | None
    product: bool
    targets: tuple[int, ...] | None = None
    stop_gradient: bool = False


@dataclass(frozen=True)
class Objective:
    """A training objective and the joint posterior it implies.

    Attributes
    ----------
    terms
        The ELBO terms.
    mixture
        ``True``: terms are averaged over those valid for a cell (mixture-of-experts ELBO).
        ``False``: terms are added (MVAE's joint plus unimodal ELBOs).
    posterior
        Components of the joint posterior ``q(z_shared | x)`` used for embeddings; the embedding is the
        mean of the valid components' means.
    """

    terms: tuple[Term, ...]
    mixture: bool
    posterior: tuple[Term, ...]

    def decodes_across(self, n_modalities: int) -> bool:
        """Whether some term decodes a target that is not one of its experts (a cross-modal term).

        Only such rows decode a target with its private block at the prior mean, so only then is a separate
        marginal dispersion trained. MVAE has none: its joint term takes every observed modality as expert.
        """
        for term in self.terms:
            if term.experts is None:
                continue
            targets = range(n_modalities) if term.targets is None else term.targets
            if any(m not in term.experts for m in targets):
                return True
        return False


def _singletons(n_modalities: int, stop_gradient: bool) -> tuple[Term, ...]:
    return tuple(Term(experts=(j,), product=False, stop_gradient=stop_gradient) for j in range(n_modalities))


def _subsets(n_modalities: int) -> tuple[Term, ...]:
    return tuple(
        Term(experts=subset, product=True)
        for size in range(1, n_modalities + 1)
        for subset in combinations(range(n_modalities), size)
    )


def make_objective(name: str, n_modalities: int) -> Objective:
    """Terms of the objective ``name`` for ``n_modalities`` modalities.

    Parameters
    ----------
    name
        One of ``"mmvae++"``, ``"mmvae"``, ``"mopoe"``, ``"mvae"``.
    n_modalities
        Number of modalities.
    """
    if name in ("mmvae++", "mmvae"):
        # Mixture of the unimodal experts; MMVAE++ cuts the shared gradient of same-modality terms.
        terms = _singletons(n_modalities, stop_gradient=name == "mmvae++")
        return Objective(terms=terms, mixture=True, posterior=terms)
    if name == "mopoe":
        # Mixture over all subsets, each a product of its experts and the prior.
        terms = _subsets(n_modalities)
        return Objective(terms=terms, mixture=True, posterior=terms)
    if name == "mvae":
        # Product of all observed experts (joint ELBO) plus each modality reconstructing only itself.
        joint = Term(experts=None, product=True)
        unimodal = tuple(Term(experts=(j,), product=True, targets=(j,)) for j in range(n_modalities))
        return Objective(terms=(joint, *unimodal), mixture=False, posterior=(joint,))
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {name!r}")


#: Public names of the objectives.
OBJECTIVES = ("mmvae++", "mmvae", "mopoe", "mvae")
