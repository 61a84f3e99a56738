"""The storage schema (hpo.attrs): every key in one module, the docs' table generated from it."""

from __future__ import annotations

import re
from pathlib import Path

from hpo import attrs

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- attrs:begin -->", "<!-- attrs:end -->"
# modules that must take every key from hpo.attrs (no "hpo:..." literal of their own)
OWNERS = ["src/hydra_plugins/hpo_sweeper", "src/hpo/report.py", "src/hpo/status.py",
          "src/hpo/progress.py", "src/hpo/dashboard.py", "src/hpo/callbacks",
          "src/hpo/samplers"]
LITERAL = re.compile(r"""["'](hpo:[a-z_]+)["']""")


def test_the_docs_carry_the_schema_table() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text()
    assert BEGIN in doc and END in doc, "docs/architecture.md lost its attrs table markers"
    table = doc.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == attrs.schema_table(), (
        "docs/architecture.md's storage schema differs from hpo.attrs: paste the output of "
        "`python -m hpo.attrs` between the markers"
    )


def test_keys_are_unique_and_documented() -> None:
    names = [k.name for k in attrs.KEYS]
    assert len(names) == len(set(names))
    for k in attrs.KEYS:
        assert k.scope in ("trial", "study") and k.writer and k.meaning, k


def test_every_hpo_key_in_the_code_is_in_the_schema() -> None:
    known = {k.name for k in attrs.KEYS}
    unknown = {}
    for path in (REPO / "src").rglob("*.py"):
        if path.name == "attrs.py":
            continue
        for key in LITERAL.findall(path.read_text()):
            if key not in known:
                unknown[key] = str(path.relative_to(REPO))
    assert not unknown, f"keys missing from hpo.attrs: {unknown}"


def test_the_readers_of_storage_name_no_key_of_their_own() -> None:
    offenders = []
    for owner in OWNERS:
        root = REPO / owner
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if LITERAL.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_readers_of_launch_records_old_and_new() -> None:
    new = {attrs.LAUNCH: attrs.launch_record("h:1:2", ["x=1", "model=mlp"])}
    old = {attrs.DRIVER: "h:1:2", attrs.OVERRIDES: ["x=1", "model=mlp"]}
    for a in (new, old):
        assert attrs.launch_driver(a) == "h:1:2"
        assert attrs.launch_overrides(a) == ["x=1", "model=mlp"]
    assert attrs.launch_driver({}) is None and attrs.launch_overrides({}) is None


def test_output_dir_is_stored_or_derived_from_the_drivers_pattern() -> None:
    study = {attrs.DRIVERS: [
        "old:1:1",  # an id string, as older versions wrote
        attrs.driver_record("h:1:2", "/runs/sweep/trial_{number}"),
        attrs.driver_record("h:3:4", None),
    ]}
    assert [d["id"] for d in attrs.driver_records(study)] == ["old:1:1", "h:1:2", "h:3:4"]
    # each driver of this version under its own key, merged after the old list, by start time
    both = {**study, attrs.driver_key("h:9:9"): attrs.driver_record("h:9:9", None, since=20.0),
            attrs.driver_key("h:5:5"): attrs.driver_record("h:5:5", "/r/{number}", since=10.0),
            attrs.driver_key("h:1:2"): attrs.driver_record("h:1:2", "/dup", since=5.0)}
    assert [d["id"] for d in attrs.driver_records(both)] == [
        "old:1:1", "h:1:2", "h:3:4", "h:5:5", "h:9:9"]
    assert [d["id"] for d in attrs.driver_records(both, keep=2)] == ["h:5:5", "h:9:9"]
    launched = {attrs.LAUNCH: attrs.launch_record("h:1:2", [])}
    assert attrs.trial_output_dir(7, launched, study) == "/runs/sweep/trial_7"
    stored = {**launched, attrs.OUTPUT_DIR: "/elsewhere/7"}
    assert attrs.trial_output_dir(7, stored, study) == "/elsewhere/7"
    assert attrs.trial_output_dir(7, {attrs.LAUNCH: attrs.launch_record("h:3:4", [])},
                                  study) is None
    assert attrs.trial_output_dir(7, {}, study) is None
