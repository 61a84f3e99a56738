"""Smoke runs of every benchmark in ``benchmarks/`` with tiny sizes: the table prints, no timings.

The peer (hydra-optuna-sweeper) needs its own venv from PyPI; its test runs only where
``benchmarks/.venv-peer`` already exists (``python benchmarks/bench_overhead.py`` creates it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.slow

CASES = {
    "overhead": ["bench_overhead.py", "--quick", "--trials", "4", "--repeats", "1", "--no-peer"],
    "prompt": ["bench_prompt.py", "--quick", "--trials", "12", "--chains", "single,diagnose",
               "--repeats", "2"],
    "llm_calls": ["bench_llm_calls.py", "--quick", "--k", "1,2", "--trials", "4", "--chains",
                  "single"],
    "async": ["bench_async.py", "--quick", "--trials", "4", "--slots", "2", "--mean", "0.05",
              "--no-peer"],
    "training": ["bench_training.py", "--quick", "--models", "mlp,cnn", "--data",
                 "digits,synthetic", "--threads", "1"],
}


def _run(args: list[str], tmp_path: Path) -> tuple[str, dict]:
    out_json = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / args[0]), *args[1:], "--json", str(out_json)],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout, json.loads(out_json.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_prints_its_table(name: str, tmp_path: Path) -> None:
    stdout, doc = _run(CASES[name], tmp_path)
    assert "- command: `python benchmarks/" in stdout and "- machine: " in stdout
    (table,) = doc["tables"]
    assert table["rows"], f"{name}: the table has no rows"
    header = "| " + " | ".join(table["columns"])
    assert f"### {table['title']}" in stdout
    assert any(line.replace(" ", "").startswith(header.replace(" ", ""))
               for line in stdout.splitlines()), f"{name}: no table header in stdout"
    for row in table["rows"]:
        assert len(row) == len(table["columns"])
    if name == "llm_calls":  # counts, not timings, are deterministic: one call per k trials
        for row in table["rows"]:
            cells = dict(zip(table["columns"], row, strict=True))
            assert int(cells["trials"]) == 4
            assert cells["met"] == "yes", cells


def test_overhead_with_the_peer(tmp_path: Path) -> None:
    """Runs the real peer: bench_overhead.py creates benchmarks/.venv-peer from PyPI when it is
    missing (about a minute, once per checkout)."""
    stdout, doc = _run(["bench_overhead.py", "--quick", "--trials", "4", "--repeats", "1"],
                       tmp_path)
    runners = {row[0] for row in doc["tables"][0]["rows"]}
    assert "hydra-optuna-sweeper" in runners and "hpo" in runners
    assert "peer venv: hydra-optuna-sweeper 1.3" in stdout
