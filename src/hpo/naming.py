"""Default study names: the config name plus a short, stable hash of the search space.

Two sweeps of one app whose search spaces differ then land in two studies of the same storage
instead of the second one failing on the first one's space (issue 16, item 3); rerunning a
command keeps its name, so it resumes its own study. Pure: no storage, no Hydra.

    >>> from optuna.distributions import FloatDistribution
    >>> default_study_name("train", {"optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True)})
    'train-cef444'
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from optuna.distributions import BaseDistribution, distribution_to_json

__all__ = ["HASH_CHARS", "default_study_name", "space_hash"]

# hex digits of the hash in a default name: 16.7 million values, short enough to type
HASH_CHARS = 6
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def space_hash(distributions: Mapping[str, BaseDistribution], *, chars: int = HASH_CHARS) -> str:
    """A short hex digest of a search space, independent of the parameters' order.

    The same names with the same distributions (bounds, log, step, choices) give the same
    digest in every process and version of Python: it hashes Optuna's JSON form of each
    distribution, not Python's ``hash``.

    Args:
        distributions: Parameter name -> Optuna distribution.
        chars: Hex digits to keep (1..64).

    Raises:
        ValueError: ``chars`` is out of range.
    """
    if not 1 <= chars <= 64:
        raise ValueError(f"chars={chars!r} is invalid: use 1..64 hex digits")
    canonical = json.dumps(
        sorted((name, json.loads(distribution_to_json(d))) for name, d in distributions.items()),
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:chars]


def default_study_name(config_name: str | None,
                       distributions: Mapping[str, BaseDistribution]) -> str:
    """``<config name>-<space hash>``, e.g. ``train-3f9a1c``: the study a sweep uses when the
    user names none.

    Args:
        config_name: The app's primary config (``hydra.job.config_name``); None or empty gives
            ``study``. Characters other than letters, digits, ``_.-`` become ``_``.
        distributions: The sweep's search space.
    """
    stem = _UNSAFE.sub("_", (config_name or "").strip()).strip("_") or "study"
    return f"{stem}-{space_hash(distributions)}"
