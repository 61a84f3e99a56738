"""What the sampler stores as text (issue 15 item 1): capped, marked when cut, one write a note.

Real SQLite through Optuna's RDBStorage; the notes are read back with optuna-dashboard's own
reader (``get_note``), and every SQL commit is counted with a SQLAlchemy event on the storage's
engine.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna_dashboard import get_note, save_note

# the dashboard's piece length: its format, read from its source so a change shows up here
from optuna_dashboard._note import SYSTEM_ATTR_MAX_LENGTH
from sqlalchemy import event

from hpo.samplers._stored import (
    ATTR_MAX_CHARS,
    ITEM_MAX_CHARS,
    ITEMS_MAX,
    MAX_STORED_BYTES,
    NOTE_MAX_CHARS,
    DashboardNotes,
    cap_text,
    clean_text,
    storable,
    stored_size,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

MARK = "… [truncated: "


class Commits:
    """Counts the SQL commits of a storage's engine (Optuna commits after reads too)."""

    def __init__(self, storage: RDBStorage) -> None:
        self.n = 0
        event.listen(storage.engine, "commit", self._count)

    def _count(self, conn: object) -> None:
        self.n += 1

    def since(self, before: int) -> int:
        return self.n - before


@pytest.fixture
def study(tmp_path: Path) -> Iterator[tuple[optuna.Study, RDBStorage, Commits]]:
    storage = RDBStorage(f"sqlite:///{tmp_path / 'notes.db'}")
    study = optuna.create_study(storage=storage, study_name="notes")
    yield study, storage, Commits(storage)
    storage.remove_session()


def test_cap_text_marks_the_cut_and_keeps_short_text() -> None:
    assert cap_text("short", 100) == "short"
    cut = cap_text("x" * 10_000, 500)
    assert len(cut) <= 500 and cut.endswith("[truncated: 10000 characters in all]")
    # 2000 emoji are 24 KB as Optuna stores them (JSON \\u escapes): cut to the byte limit
    cut = cap_text("😀" * 2000, 2000)
    assert stored_size(cut) <= MAX_STORED_BYTES and MARK in cut


def test_clean_text_leaves_no_half_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = f"zz{secrets.token_hex(16)}"
    monkeypatch.setenv("SOMEONE_API_KEY", key)
    for start in range(ATTR_MAX_CHARS - 60, ATTR_MAX_CHARS + 5, 7):
        text = "a" * start + key + "b" * 5_000_000
        out = clean_text(text, ATTR_MAX_CHARS)
        assert len(out) <= ATTR_MAX_CHARS and out.endswith(f"{len(text)} characters in all]")
        assert key[:8] not in out and key[-8:] not in out


def test_a_redacted_key_can_make_a_text_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "k" * 60
    monkeypatch.setenv("SOMEONE_API_KEY", key)
    text = "a" * (ATTR_MAX_CHARS - 20) + key  # too long with the key, short without it
    assert clean_text(text, ATTR_MAX_CHARS) == "a" * (ATTR_MAX_CHARS - 20) + "***"


def test_storable_caps_strings_and_lists() -> None:
    assert storable(3) == 3 and storable("ok") == "ok"
    assert len(storable("y" * 1_000_000)) <= ATTR_MAX_CHARS
    items = storable([f"param_{i}_" + "z" * 1000 for i in range(500)])
    assert len(items) == ITEMS_MAX + 1 and items[-1] == "… [truncated: 500 items in all]"
    assert all(len(v) <= ITEM_MAX_CHARS for v in items)
    assert len(json.dumps(items)) < 6_000
    assert storable({"lr": "Bearer tok3n-abcdefgh"}) == {"lr": "Bearer ***"}


def test_trial_note_is_one_piece_read_by_the_dashboard(
    study: tuple[optuna.Study, RDBStorage, Commits],
) -> None:
    st, storage, commits = study
    trial = st.ask()
    before = commits.n
    body = DashboardNotes().trial_note(storage, st._study_id, trial._trial_id,
                                       "**llm** (call-0001)\n\n" + "why " * 500_000)
    assert commits.since(before) == 2  # the piece, the version: nothing read, nothing more
    assert len(body) <= NOTE_MAX_CHARS < SYSTEM_ATTR_MAX_LENGTH and MARK in body
    assert get_note(trial) == body
    pieces = [k for k in storage.get_study_system_attrs(st._study_id) if ":note_str:" in k]
    assert pieces == [f"dashboard:{trial._trial_id}:note_str:0"]


def test_study_note_is_rewritten_in_one_commit(
    study: tuple[optuna.Study, RDBStorage, Commits],
) -> None:
    st, storage, commits = study
    save_note(st, "an older, longer note " * 1000)  # the dashboard's own: ~11 pieces
    notes = DashboardNotes()
    before = commits.n
    first = notes.study_note(storage, st._study_id, "## Diagnosis\n\n" + "d" * 3_000_000)
    # the one read of this instance, the piece, then one per stale piece of the old note
    assert commits.since(before) <= 12
    assert MARK in first and len(first) <= NOTE_MAX_CHARS
    assert get_note(st) == first  # the older pieces were cleared
    for i in range(5):
        before = commits.n
        body = notes.study_note(storage, st._study_id, f"## Diagnosis\n\nround {i} " + "e" * 10**6)
        assert commits.since(before) == 1  # one commit per rewrite, whatever the size
        assert get_note(st) == body


def test_the_dashboards_own_save_note_would_commit_per_piece(
    study: tuple[optuna.Study, RDBStorage, Commits],
) -> None:
    """Why notes are not written with ``save_note``: its commits grow with the text."""
    st, _, commits = study
    before = commits.n
    save_note(st, "x" * 200_000)
    assert commits.since(before) >= 200_000 // SYSTEM_ATTR_MAX_LENGTH
