"""What knowing the guide is worth to the guide -> RNA cross-modal term, against what encoding the guide costs.

In a cross-modal term the RNA decoder sees ``z_shared`` from the guide expert and the RNA private block at 0, so
the most that term can gain per cell from ``z_shared`` is the log-likelihood gain of a per-guide RNA model over a
guide-blind one, both with the dispersion of the marginal over the private programmes (what the marginal dispersion
learns). The KL term charges at least the information ``z_shared`` carries about the guide: up to ``log(n_guides)``
nats per cell to tell every guide apart.

For each setting and seed (data of :func:`spvi.datasets.synthetic_perturbation` as in ``perturbation.py``, the same
80/20 split): for the genes with a simulated effect (targets and downstream genes; the oracle knows which), an NB
per gene with mean ``library * p_gene`` (guide-blind) or ``library * p_gene,guide`` (per guide), ``p`` from the
training cells' counts, inverse dispersion by the method of moments on the training cells (guide-blind), scored on
the held-out cells: **gain = mean over held-out cells of the summed log-likelihood difference** (nats).

Usage::

    python benchmarks/perturbation_information.py    # writes results/perturbation_information.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from perturbation import split
from scipy.special import gammaln

import spvi

RESULTS = Path(__file__).parent / "results"


def nb_log_likelihood(x: np.ndarray, mean: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Element-wise log NB(x; mean, inverse dispersion theta)."""
    return (
        gammaln(x + theta)
        - gammaln(theta)
        - gammaln(x + 1)
        + theta * np.log(theta / (theta + mean))
        + x * np.log(mean / (theta + mean) + 1e-12)
    )


def guide_information_gain(mdata, train: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """Held-out log-likelihood gain per cell (nats) of per-guide means on the affected genes; their median theta."""
    counts = mdata["rna"].X.astype(np.float64)
    library = counts.sum(axis=1, keepdims=True)
    guide = mdata.obs["guide"].cat.codes.to_numpy()
    affected = (mdata["rna"].varm["perturbation_effect"].to_numpy() != 0).any(axis=1)
    x = counts[:, affected]
    proportion = x[train].sum(axis=0) / library[train].sum()
    mean_train = library[train] * proportion
    excess = ((x[train] - mean_train) ** 2 - mean_train).mean(axis=0)
    theta = np.clip((mean_train**2).mean(axis=0) / np.maximum(excess, 1e-6), 1e-3, 1e4)
    per_guide = np.stack(
        [
            x[train][guide[train] == g].sum(axis=0) / library[train][guide[train] == g].sum()
            for g in range(mdata["guide"].n_vars)
        ]
    )
    blind = nb_log_likelihood(x[test], library[test] * proportion, theta).sum(axis=1)
    informed = nb_log_likelihood(x[test], library[test] * per_guide[guide[test]], theta).sum(axis=1)
    return float((informed - blind).mean()), float(np.median(theta))


def main() -> None:
    rows = []
    for n_programmes, effect, downstream_size in [
        (10, 1.0, 10),
        (10, 2.0, 10),
        (2, 2.0, 10),
        (10, 1.0, 30),
        (10, 2.0, 30),
    ]:
        for seed in (0, 1, 2):
            mdata = spvi.datasets.synthetic_perturbation(
                n_cells=2000,
                n_guides=15,
                n_private_programmes=n_programmes,
                effect=effect,
                downstream_size=downstream_size,
                seed=seed,
            )
            gain, theta = guide_information_gain(mdata, *split(mdata, seed))
            rows.append(
                {
                    "programmes": n_programmes,
                    "effect": effect,
                    "downstream genes": downstream_size,
                    "seed": seed,
                    "gain": gain,
                    "theta": theta,
                }
            )
    table = pd.DataFrame(rows).groupby(["programmes", "effect", "downstream genes"], sort=False)
    summary = table.agg(gain_mean=("gain", "mean"), gain_sd=("gain", "std"), theta=("theta", "mean")).reset_index()
    summary["gain per cell (nats)"] = [
        f"{m:.2f} ± {s:.2f}" for m, s in zip(summary.gain_mean, summary.gain_sd, strict=True)
    ]
    summary["median marginal theta"] = summary["theta"].round(1)
    summary["log(n_guides)"] = round(float(np.log(15)), 2)
    text = (
        "# Guide -> RNA: log-likelihood gain per held-out cell from knowing the guide vs the cost of encoding it\n\n"
        "NB with the marginal dispersion on the genes with a simulated effect; mean ± sd over seeds 0-2; "
        "`python benchmarks/perturbation_information.py`.\n\n"
        + summary.drop(columns=["gain_mean", "gain_sd", "theta"]).to_markdown(index=False)
        + "\n"
    )
    (RESULTS / "perturbation_information.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
