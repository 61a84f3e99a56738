"""What the sampler stores as text (attrs, dashboard notes): redacted, capped, marked when cut.

LLM replies are bounded by ``agent.max_reply_bytes`` (hundreds of KB), but nothing of that size
belongs in storage: every string attr, rationale and note is redacted first (a cut must not
leave half a key behind), then capped. A cut text ends in :data:`TRUNCATED`, e.g.
``"... [truncated: 1333802 characters in all]"``; a cut list ends in an item saying how many
items there were.

optuna-dashboard keeps notes in the study's system attrs, split into pieces of
``SYSTEM_ATTR_MAX_LENGTH`` (2045) characters, one attr per piece plus a version attr, and its
``save_note`` commits every piece on its own and reads all the study's system attrs (every
note of the study) twice per note. A note here is capped below one piece and written with
Optuna's public storage API as that one piece plus, for a new note, its version: no reads, no
commit per KB. The key format is the dashboard's (``optuna_dashboard.get_note`` reads these
notes back; tests/samplers/test_stored.py checks it with the dashboard's own reader).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from optuna.storages import BaseStorage

from hpo.secrets import KEY_MARGIN, TRUNCATED, redact_head, redact_obj

__all__ = [
    "ATTR_MAX_CHARS",
    "ITEMS_MAX",
    "NOTE_MAX_CHARS",
    "TRUNCATED",
    "DashboardNotes",
    "cap_text",
    "clean_text",
    "storable",
]

#: The last item of a cut list.
TRUNCATED_ITEMS = "… [truncated: {n} items in all]"
# A dashboard note fits one piece of the dashboard (2045 characters), header included.
NOTE_MAX_CHARS = 2000
# A string attr (the planner's stop reason, ...), and each item of a list attr.
ATTR_MAX_CHARS = 2000
ITEM_MAX_CHARS = 200
ITEMS_MAX = 20
# Optuna stores a value as JSON with non-ASCII characters escaped (\uXXXX, 6 bytes): a text is
# also cut to this many bytes as stored, so 2000 characters of CJK or emoji stay a few KB.
MAX_STORED_BYTES = 4096


def stored_size(text: str) -> int:
    """Bytes ``text`` takes in storage (Optuna's JSON encoding, quotes excluded)."""
    return len(json.dumps(text)) - 2


def cap_text(
    text: str, max_chars: int, max_bytes: int = MAX_STORED_BYTES, *, total: int | None = None
) -> str:
    """``text`` when it fits, else its beginning and :data:`TRUNCATED`, within both limits.

    Args:
        text: The text, already redacted.
        max_chars: Characters at most, the mark included.
        max_bytes: Bytes at most as stored (:func:`stored_size`), the mark included.
        total: The length the mark reports when ``text`` is itself a cut of a longer text.
    """
    if total is None and len(text) <= max_chars and stored_size(text) <= max_bytes:
        return text
    mark = TRUNCATED.format(n=len(text) if total is None else total)
    lo, hi = 0, max(0, min(len(text), max_chars - len(mark)))
    while lo < hi:  # the longest beginning that fits (the stored size grows with it)
        mid = (lo + hi + 1) // 2
        if stored_size(text[:mid] + mark) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + mark


def clean_text(text: str, max_chars: int) -> str:
    """``text`` as stored: redacted (:func:`hpo.secrets.redact_head`: no half key is left and a
    huge text costs no more than a short one), then capped by :func:`cap_text`."""
    head = redact_head(text, max_chars)
    dropped = len(text) > max_chars + KEY_MARGIN  # redact_head left part of the text out
    return cap_text(head, max_chars, total=len(text) if dropped else None)


def storable(value: Any) -> Any:
    """``value`` as the sampler stores it in an attr: redacted, strings and lists capped.

    Strings: :data:`ATTR_MAX_CHARS`. Lists (names of dropped parameters, dropped proposals):
    :data:`ITEMS_MAX` items of :data:`ITEM_MAX_CHARS` each, then one item saying how many
    there were. Mappings are redacted (their keys are search-space names).
    """
    if isinstance(value, str):
        return clean_text(value, ATTR_MAX_CHARS)
    if isinstance(value, list | tuple):
        return _capped_items(value)
    if isinstance(value, dict):
        return redact_obj(value)
    return value


def _capped_items(items: Sequence[Any]) -> list[Any]:
    out = [
        clean_text(v, ITEM_MAX_CHARS) if isinstance(v, str) else redact_obj(v)
        for v in items[:ITEMS_MAX]
    ]
    if len(items) > ITEMS_MAX:
        out.append(TRUNCATED_ITEMS.format(n=len(items)))
    return out


def _note_keys(trial_id: int | None) -> tuple[str, str]:
    """optuna-dashboard's keys of a note: its version and the prefix of its pieces."""
    scope = "dashboard:" if trial_id is None else f"dashboard:{trial_id}:"
    return f"{scope}note_ver", f"{scope}note_str:"


class DashboardNotes:
    """Writes the sampler's optuna-dashboard notes: the trials' rationales, the study diagnosis.

    A trial's note is written once, when its trial is new: its piece, then version 1 (two
    single-row writes, nothing read). The study note is rewritten at every chain call: the
    first write of this instance reads the study's system attrs once (to learn whether a note
    is there and to clear pieces a longer note left behind), later ones write the one piece
    and nothing else. The version is left alone on rewrites: the dashboard only uses it to warn
    a user editing the note that it changed, and the sampler rewrites that note anyway.
    """

    def __init__(self) -> None:
        self._ready: set[int] = set()  # studies whose note this instance has set up
        self._lock = threading.Lock()

    def trial_note(self, storage: BaseStorage, study_id: int, trial_id: int, text: str) -> str:
        """Write the note of a new trial; returns the text stored."""
        body = clean_text(text, NOTE_MAX_CHARS)
        ver_key, piece = _note_keys(trial_id)
        storage.set_study_system_attr(study_id, f"{piece}0", body)
        storage.set_study_system_attr(study_id, ver_key, 1)
        return body

    def study_note(self, storage: BaseStorage, study_id: int, text: str) -> str:
        """(Re)write the study's note; returns the text stored."""
        body = clean_text(text, NOTE_MAX_CHARS)
        ver_key, piece = _note_keys(None)
        with self._lock:
            first = study_id not in self._ready
            if first:
                attrs = storage.get_study_system_attrs(study_id)
            storage.set_study_system_attr(study_id, f"{piece}0", body)
            if first:
                # pieces of a longer note (a user's edit in the dashboard, an older hpo)
                for k in sorted(k for k in attrs if k.startswith(piece) and k != f"{piece}0"):
                    if attrs[k]:
                        storage.set_study_system_attr(study_id, k, "")
                if ver_key not in attrs:
                    storage.set_study_system_attr(study_id, ver_key, 1)
                self._ready.add(study_id)
        return body
