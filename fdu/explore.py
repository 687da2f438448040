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


def divergence_explorer():
    """D_f(δ²) between the two Gaussian steps for any divergence of the registry or any α, against KL,
    with a marked δ² whose values are printed (notebook 01)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from .divergences import DIVERGENCES
    from .gaussian import gaussian_divergence
    from .plotting import pretty

    names = sorted(n for n in DIVERGENCES if n != "alpha")

    def show(divergence="squared_hellinger", alpha=0.5, delta2_max=20.0, mark=2.0):
        d2 = np.linspace(1e-4, delta2_max, 300)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, a, label in (("kl", None, "KL = δ²/2"), (divergence, None, pretty(divergence)),
                               ("alpha", alpha, f"α family, α = {alpha:g}")):
            try:
                values = gaussian_divergence(name, d2, a)
                at = float(gaussian_divergence(name, np.array([mark]), a)[0])
            except ValueError as err:  # an α where the formula degenerates: the error names why
                print(f"{label}: {err}")
                continue
            ax.plot(d2, values, label=label, color=color(name, "#444444"), ls="--" if name == "alpha" else "-")
            print(f"{label:>24}: D_f({mark:g}) = {at:.4g}")
        ax.axvline(mark, color="k", lw=0.8, ls=":")
        ax.set(xlabel="δ² = ‖μ₁ − μ₂‖² / σ²", ylabel="D_f between the two steps", title=pretty(divergence))
        ax.legend()
        plt.show()

    return widgets.interactive(show, divergence=names, alpha=(-2.0, 3.0, 0.05), delta2_max=(1.0, 100.0, 1.0),
                               mark=(0.0, 50.0, 0.5))


def toy_explorer(model, scheduler, world, target: str, anchor: str, *, before: dict, specs, steps: int = 200,
                 batch_size: int = 128, seed: int = 0):
    """Erase ``target`` from the 2-D toy with the loss, learning rate (log10) and σ chosen by sliders, and
    draw its samples before and after (notebook 04). A run takes seconds, so it starts on the button."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from . import toy2d
    from .plotting import spec_color

    by_label = {s.label: s for s in specs}

    def show(loss=specs[0].label, log10_lr=-2.0, sigma=1.0):
        spec = by_label[loss]
        r = toy2d.run(model, scheduler, world, target, anchor, spec, before=before, steps=steps,
                      lr=10 ** log10_lr, sigma=sigma, batch_size=batch_size, log_every=steps, n_eval=300,
                      boot=2, seed=seed)
        if r["failed"]:
            print(f"{loss} stopped: {r['failed']}")
            return
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for c in world.concepts:
            ax.scatter(*before[c].T, s=2, c="0.8")
        ax.scatter(*before[target].T, s=2, c="0.5", label=f"'{target}' before")
        ax.scatter(*r["samples"].T, s=3, c=spec_color(spec), label=f"'{target}' after")
        ev = r["evaluation"]
        ax.set(aspect="equal", title=f"{loss}, lr {10 ** log10_lr:.2g}, σ {sigma:g}: "
                                     f"{ev['in_target']['value']:.0%} left, drift {ev['drift']:.3g}")
        ax.legend(fontsize=7, markerscale=3)
        plt.show()

    return widgets.interact_manual(show, loss=list(by_label), log10_lr=(-4.0, -1.0, 0.25), sigma=(0.25, 4.0, 0.25))
