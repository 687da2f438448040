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
