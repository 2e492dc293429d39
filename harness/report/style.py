"""How every figure of the harness looks and is saved: one seaborn style, one marker cycle, one save helper
(the accepted formats are in formats.py).

The style is applied by whoever starts drawing (`apply_style()`), not on import, so importing a module that can
draw never changes another program's matplotlib settings.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import seaborn as sns  # noqa: E402

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]


def apply_style() -> None:
    """The harness' figure style (seaborn's whitegrid, notebook context); call before drawing."""
    sns.set_theme(style="whitegrid", context="notebook")


def save_figure(fig, out: Path, stem: str, formats: list[str]) -> list[Path]:
    """Save `fig` as out/<stem>.<format> for each format, close it -> the paths written."""
    paths = [out / f"{stem}.{fmt}" for fmt in formats]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return paths
