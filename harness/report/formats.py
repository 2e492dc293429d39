"""The figure formats every command accepts (`formats=[...]`), checked where configs are validated (no
matplotlib import: configs stay cheap to load)."""

from __future__ import annotations

FORMATS = ("png", "pdf", "svg")


def check_formats(formats, field: str) -> None:
    """Raise naming `field` when a figure format is not one of FORMATS."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"{field} has {bad}; accepted: {', '.join(FORMATS)}")
