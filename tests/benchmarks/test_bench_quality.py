"""The search-quality benchmark (benchmarks/bench_quality.py) in quick mode: one run, its tables.

One ``--quick`` process (synthetic problems, the tabulated digits task; random, TPE and hpo's
propose and hybrid modes against the adversarial fake LLM) into ``tmp_path``; the tests read its
JSON and runs and check the tables' shape and sanity, never the figures' values or timings.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import clean_env

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
QUICK_PROBLEMS = {"sphere_mixed", "branin_mixed", "digits_mlp"}
QUICK_METHODS = {"random", "tpe", "propose/adversarial", "hybrid/adversarial"}
QUICK_BUDGETS = {5, 10}
LLM_METHODS = {"propose/adversarial", "hybrid/adversarial"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tables of one ``--quick`` run (and its stdout and output folder)."""
    tmp = tmp_path_factory.mktemp("bench_quality")
    out_json = tmp / "out.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_quality.py"), "--quick", "--out", str(tmp / "out"),
         "--json", str(out_json)],
        cwd=tmp, env=clean_env(), capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    doc = json.loads(out_json.read_text())
    tables = {t["title"].split(":")[0]: t for t in doc["tables"]}
    return {"tables": tables, "stdout": proc.stdout, "out": tmp / "out"}


def _rows(table: dict[str, Any]) -> list[dict[str, str]]:
    return [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]


def test_regret_table_has_every_problem_method_budget(quick: dict[str, Any]) -> None:
    rows = _rows(quick["tables"]["Search quality"])
    keys = {(r["problem"], r["method"], int(r["budget"])) for r in rows}
    want = {(p, m, b) for p in QUICK_PROBLEMS for m in QUICK_METHODS for b in QUICK_BUDGETS}
    assert keys == want
    assert len(rows) == len(want)
    for r in rows:
        mean, low, high = float(r["regret"]), float(r["CI low"]), float(r["CI high"])
        assert 0.0 <= low <= mean <= high <= 1.0, r
        assert int(r["seeds"]) == 3


def test_regret_never_grows_with_the_budget(quick: dict[str, Any]) -> None:
    rows = _rows(quick["tables"]["Search quality"])
    by = {(r["problem"], r["method"], int(r["budget"])): float(r["regret"]) for r in rows}
    for p in QUICK_PROBLEMS:
        for m in QUICK_METHODS:
            assert by[(p, m, 10)] <= by[(p, m, 5)], (p, m)


def test_llm_use_is_counted_for_llm_methods_only(quick: dict[str, Any]) -> None:
    rows = _rows(quick["tables"]["LLM use per run (mean over seeds)"])
    assert {(r["problem"], r["method"]) for r in rows} == {
        (p, m) for p in QUICK_PROBLEMS for m in QUICK_METHODS
    }
    for r in rows:
        calls, tokens = float(r["LLM calls"]), float(r["tokens in"])
        if r["method"] in LLM_METHODS:
            assert calls > 0 and tokens > 0, r
            # the first trial is the baseline (the defaults), never an LLM call
            assert r["seed trials"] != "0 %", r
        else:
            assert calls == 0 and tokens == 0 and float(r["cost $"]) == 0, r
            assert r["LLM trials"] == "0 %", r


def test_goal_table_compares_each_llm_method_with_tpe(quick: dict[str, Any]) -> None:
    rows = _rows(quick["tables"]["Goal"])
    assert {(r["problem"], r["method"]) for r in rows} == {
        (p, m) for p in QUICK_PROBLEMS for m in LLM_METHODS
    }
    regret = {(r["problem"], r["method"], int(r["budget"])): float(r["regret"])
              for r in _rows(quick["tables"]["Search quality"])}
    for r in rows:
        assert float(r["tpe"]) == pytest.approx(regret[(r["problem"], "tpe", 10)], abs=1e-3)
        assert r["met"] in ("yes", "no")
        diff = float(r["difference"])
        assert float(r["diff CI low"]) <= diff <= float(r["diff CI high"])
        assert (r["met"] == "yes") == (diff <= 0.01)


def test_the_adversary_reaches_the_sampler(quick: dict[str, Any]) -> None:
    """Its corners become trials, its off-space values are clamped, its repeats dropped."""
    runs = sorted((quick["out"] / "runs" / "sphere_mixed" / "propose__adversarial").glob(
        "seed*_n10.json"))
    assert len(runs) == 3
    for path in runs:
        run = json.loads(path.read_text())
        assert run["sources"][0] == "baseline"
        assert {"llm", "clamped", "fallback:no_proposal"} <= set(run["sources"])
        # its first proposal is the worst corner of the box: the worst value there is
        assert max(v for v in run["values"] if v is not None) == pytest.approx(
            115.27111, abs=1e-4)
        counts = run["extra"]["adversary"]
        assert counts["corner"] > 0 and counts["off_space"] > 0 and counts["repeat"] > 0


def test_hybrid_runs_record_how_each_trial_was_shared(quick: dict[str, Any]) -> None:
    """The leader proposes most trials; each trial's source follows its recorded choice."""
    paths = sorted((quick["out"] / "runs" / "sphere_mixed" / "hybrid__adversarial").glob(
        "seed*_n10.json"))
    assert len(paths) == 3
    for path in paths:
        run = json.loads(path.read_text())
        assert run["sources"][0] == "baseline" and "leader" in run["sources"]
        assert len(run["choices"]) == len(run["sources"]) == 10
        for source, choice in zip(run["sources"][1:], run["choices"][1:], strict=True):
            assert choice is not None and 0.0 <= choice["p_llm"] <= 1.0
            if choice["to"] == "classical":
                assert source == "leader", (source, choice)
            else:
                assert source in ("llm", "repaired", "clamped") or source.startswith(
                    "fallback:"), (source, choice)
        assert "trials came from the LLM" in run["extra"]["summary"]


def test_damage_table_matches_the_runs(quick: dict[str, Any]) -> None:
    """Early differences to TPE with their CI, and the LLM's share per stretch of trials."""
    rows = _rows(quick["tables"]["Damage control"])
    assert {(r["problem"], r["method"]) for r in rows} == {
        (p, m) for p in QUICK_PROBLEMS for m in LLM_METHODS
    }
    regret = {(r["problem"], r["method"], int(r["budget"])): float(r["regret"])
              for r in _rows(quick["tables"]["Search quality"])}
    for r in rows:
        diff, low, high = (float(x) for x in
                           r["vs tpe b=5 [CI]"].replace("[", "").replace("]", "")
                           .replace(",", "").split())
        assert low <= diff <= high
        want = regret[(r["problem"], r["method"], 5)] - regret[(r["problem"], "tpe", 5)]
        assert diff == pytest.approx(want, abs=2e-3)
        runs = [json.loads(p.read_text()) for p in sorted(
            (quick["out"] / "runs" / r["problem"] / r["method"].replace("/", "__"))
            .glob("seed*_n10.json"))]
        for span, lo, hi in (("1-5", 0, 5), ("6-10", 5, 10)):
            src = [s for run in runs for s in run["sources"][lo:hi]]
            share = sum(s in ("llm", "repaired", "clamped") for s in src) / len(src)
            assert r[f"LLM trials {span}"] == f"{100 * share:.0f} %"
        assert 0.0 <= float(r["p_llm at end"]) <= 1.0


def test_versus_table_compares_real_llms_only(quick: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripted LLMs have no row; an LLM counted as real gets one per budget."""
    assert quick["tables"]["Real LLMs against seeded TPE and CMA-ES"]["rows"] == []
    monkeypatch.syspath_prepend(str(BENCH))
    from quality.problems import PROBLEMS
    from quality.report import curves, versus_table
    from quality.runner import Job, Run

    runs = {}
    for m in ("tpe", "propose/adversarial"):
        for seed in range(3):
            job = Job("digits_mlp", m, seed, 10)
            runs[job] = Run.load(job.path(quick["out"]))
    all_curves, _ = curves({"digits_mlp": PROBLEMS["digits_mlp"]()},
                           {"tpe": False, "propose/adversarial": True}, runs)
    table = versus_table(all_curves, [5, 10], scripted=[])
    rows = [dict(zip(table.columns, row, strict=True)) for row in table.rows]
    assert [(r["method"], r["budget"]) for r in rows] == [("propose/adversarial", "5"),
                                                          ("propose/adversarial", "10")]
    regret = {(r["method"], int(r["budget"])): r["regret"]
              for r in _rows(quick["tables"]["Search quality"])
              if r["problem"] == "digits_mlp"}
    for r in rows:
        assert r["regret [CI]"].split()[0] == regret[("propose/adversarial", int(r["budget"]))]
        assert r["tpe"] == regret[("tpe", int(r["budget"]))]
        assert r["tpe_seeded"] == "-" and r["cmaes"] == "-"  # not in the quick run


def test_a_rerun_reuses_the_runs_on_disk(quick: dict[str, Any], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_quality.py"), "--quick", "--problems",
         "sphere_mixed", "--methods", "tpe", "--out", str(quick["out"])],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 runs: 3 already in" in proc.stderr


def test_shipped_digits_table_covers_its_grid() -> None:
    """The tabulated benchmark's file: a header and one row per grid point, with curves."""
    path = BENCH / "data" / "digits_mlp.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        head = json.loads(f.readline())
        rows = [json.loads(line) for line in f]
    n = 1
    for values in head["grid"].values():
        n *= len(values)
    assert len(rows) == n
    assert len({tuple(sorted(r["params"].items())) for r in rows}) == n
    done = [r for r in rows if r["value"] is not None]
    assert done and all(0.0 <= r["value"] <= 1.0 for r in done)
    for r in done:
        assert len(r["intermediate"]) == len(r["curves"]["epoch"]) >= 1
        assert {"train/loss", "val/loss", "val/acc"} <= set(r["curves"])
        assert max(r["curves"]["val/acc"]) == pytest.approx(r["value"], abs=1e-5)


def test_bad_arguments_exit_with_one_line(tmp_path: Path) -> None:
    for args, word in ((["--problems", "nope"], "'nope'"), (["--methods", "sgd"], "'sgd'"),
                       (["--agents", "robot"], "'robot'")):
        proc = subprocess.run(
            [sys.executable, str(BENCH / "bench_quality.py"), "--quick", *args, "--out",
             str(tmp_path)],
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert word in proc.stderr and "Traceback" not in proc.stderr


def test_docs_without_the_block_exit_before_any_run(tmp_path: Path) -> None:
    doc = BENCH.parent / "docs" / "benchmarks.md"
    before = doc.read_bytes()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_quality.py"), "--quick", "--docs", "--docs-block",
         "no_such_block", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "<!-- no_such_block:begin -->" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
    assert doc.read_bytes() == before
