"""One style and one ``savefig`` for every figure (PNG for the web, PDF for print)."""
from __future__ import annotations

import matplotlib

from .paths import figures_dir

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "pdf.fonttype": 42,
}

#: one colour per divergence, the same in every notebook
COLORS = {
    "kl": "#1f77b4", "reverse_kl": "#aec7e8", "jeffreys": "#17becf",
    "squared_hellinger": "#d62728", "jensen_shannon": "#2ca02c", "pearson_chi2": "#ff7f0e",
    "neyman_chi2": "#ffbb78", "total_variation": "#7f7f7f",
}


#: the names a reader sees, for every divergence of the registry
PRETTY = {
    "kl": "KL = MSE", "reverse_kl": "reverse KL", "jeffreys": "Jeffreys", "squared_hellinger": "squared Hellinger",
    "jensen_shannon": "Jensen–Shannon", "pearson_chi2": "Pearson χ²", "neyman_chi2": "Neyman χ²",
    "total_variation": "total variation", "alpha": "α family",
}

#: concepts and anchors get their own palette, disjoint from the divergences' (dark purple to yellow-green)
CONCEPT_COLORS = ["#3b0f70", "#21918c", "#b5de2b", "#8c2981", "#fc8961", "#5dc863", "#31688e", "#fde725"]
ANCHOR_COLORS = {"near": CONCEPT_COLORS[0], "superclass": CONCEPT_COLORS[1], "empty": CONCEPT_COLORS[2]}
ANCHOR_MARKERS = {"near": "o", "superclass": "s", "empty": "^"}


def pretty(name: str) -> str:
    """A divergence's display name (``"squared_hellinger"`` → ``"squared Hellinger"``); other names unchanged."""
    return PRETTY.get(name, name)


def concept_color(i: int) -> str:
    """The i-th colour of the concepts' palette (cycling)."""
    return CONCEPT_COLORS[i % len(CONCEPT_COLORS)]


def pareto_envelope(points, x: str, y: str) -> tuple[list, list]:
    """The lower-left envelope of ``points`` (dicts) as a staircase: (xs, ys) to plot. A point is on the
    envelope when no other has both a lower or equal x and a lower y; between two envelope points the
    attainable region's edge is horizontal then vertical, so the staircase is the true frontier, not a
    line through the points in the order they were run."""
    pts = sorted((float(p[x]), float(p[y])) for p in points)
    front = []
    for px, py in pts:
        if not front or py < front[-1][1]:
            front.append((px, py))
    xs, ys = [], []
    for k, (px, py) in enumerate(front):
        if k:
            xs.append(px)
            ys.append(front[k - 1][1])
        xs.append(px)
        ys.append(py)
    return xs, ys


def use_style():
    matplotlib.rcParams.update(STYLE)


def color(name: str, default: str = "#9467bd") -> str:
    return COLORS.get(name, default)


def spec_color(spec) -> str:
    """The colour of a :class:`fdu.losses.LossSpec`: its divergence's, and two for the α family."""
    if spec.divergence != "alpha":
        return color(spec.divergence)
    return "#8c564b" if spec.alpha < 1 else "#e377c2"


def spec_linestyle(spec) -> str:
    """Dashed for a variational loss, solid for a closed form."""
    return "--" if spec.variational else "-"


def savefig(fig, name: str):
    """Write ``<name>.png`` and ``.pdf`` to :func:`fdu.paths.figures_dir` (``figures/`` under ``make
    figures``, ``scratch/figures`` in an interactive session)."""
    folder = figures_dir()
    paths = []
    for ext, extra in (("png", {}), ("pdf", {"metadata": {"CreationDate": None}})):
        path = folder / f"{name}.{ext}"
        fig.savefig(path, **extra)
        paths.append(path)
    return paths


def image_grid(rows, *, row_labels=None, col_labels=None, title=None, size: float = 1.15):
    """A figure of PIL images, ``rows`` a list of lists (one list per row), labelled by row and column."""
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols + 1.2, size * n_rows + 0.5), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                ax.imshow(row[j])
            else:
                ax.axis("off")
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
            if i == 0 and col_labels:
                ax.set_title(col_labels[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
