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


def savefig(fig, name: str):
    """Write ``figures/<name>.png`` and ``.pdf`` (the folder may be redirected, see fdu.paths)."""
    folder = figures_dir()
    paths = []
    for ext, extra in (("png", {}), ("pdf", {"metadata": {"CreationDate": None}})):
        path = folder / f"{name}.{ext}"
        fig.savefig(path, **extra)
        paths.append(path)
    return paths
