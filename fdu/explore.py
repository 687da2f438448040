"""Sliders for readers who open the notebooks in Jupyter (ipywidgets).

Under papermill the widgets render once with their defaults; every figure and number the notebooks
save comes from plain cells, not from here.
"""
from __future__ import annotations

import numpy as np

from . import theory
from .plotting import color

WEIGHT_NAMES = ("kl", "squared_hellinger", "jensen_shannon", "pearson_chi2")
GAME_NAMES = ("kl", "reverse_kl", "squared_hellinger", "jensen_shannon", "pearson_chi2")


def weight_explorer():
    """Gradient weight w_f against the distance ||pred - target||, with sliders for sigma, alpha
    and the distance delta that is marked."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(sigma=1.0, alpha=0.5, delta=2.0):
        dist = np.linspace(0, max(2 * delta, 1.0), 300)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        curves = [(n, None, n) for n in WEIGHT_NAMES] + [("alpha", alpha, f"alpha = {alpha:g}")]
        for name, a, label in curves:
            try:
                w = theory.gradient_weight(name, (dist / sigma) ** 2, a)
            except ValueError as err:  # chi^2 beyond float64: say so instead of plotting inf
                print(f"{label}: {err}")
                continue
            ax.plot(dist, w, label=label, color=color(name))
            at = float(theory.gradient_weight(name, (delta / sigma) ** 2, a))
            print(f"{label:>20}: w = {at:.4g} at ||pred - target|| = {delta:g}")
        ax.axvline(delta, color="k", lw=0.8, ls=":")
        ax.set(xlabel="||pred - target|| (output units)", ylabel="gradient weight w_f (KL = 1)",
               yscale="log", title=f"sigma = {sigma:g}")
        ax.legend()
        plt.show()

    return widgets.interactive(show, sigma=(0.1, 5.0, 0.1), alpha=(-2.0, 3.0, 0.1),
                               delta=(0.0, 10.0, 0.1))


def game_explorer(mu: float = 0.5, sigma: float = 1.0):
    """Predicted GDA contraction factor of each divergence, with sliders for the step size, the
    scale c of f (c f has Jacobian c J, the same as steps c eta) and the critic family."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    jacobians = {c: {n: theory.Game(n, critic=c, mu=mu, sigma=sigma).jacobian() for n in GAME_NAMES}
                 for c in theory.CRITICS}

    def show(eta=0.2, log10_scale=0.0, critic="linear"):
        scale = 10 ** log10_scale
        fig, ax = plt.subplots(figsize=(6, 3.2))
        x = np.arange(len(GAME_NAMES))
        for k, mode in enumerate(("simultaneous", "alternating")):
            rates = [theory.predicted_rate(scale * jacobians[critic][n], eta, eta, mode)
                     for n in GAME_NAMES]
            ax.bar(x + 0.4 * k - 0.2, rates, 0.4, label=mode,
                   color=[color(n) for n in GAME_NAMES], alpha=1.0 - 0.45 * k,
                   edgecolor="k", linewidth=0.5)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x, [n.replace("_", " ") for n in GAME_NAMES], rotation=20)
        ax.set(ylabel="predicted rate per step (smaller is faster)",
               title=f"eta = {eta:g}, f scaled by {scale:.3g}, {critic} critic")
        ax.legend()
        plt.show()

    return widgets.interactive(show, eta=(0.01, 1.0, 0.01), log10_scale=(-1.0, 1.0, 0.05),
                               critic=list(theory.CRITICS))
