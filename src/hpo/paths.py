"""Where hpo's shipped files are."""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_dir"]


def config_dir() -> str:
    """Where ``conf/`` is: inside the installed package (wheel) or at the repository root."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(here.parents[1] / "conf")
