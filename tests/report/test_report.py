"""hpo.report on small real SQLite studies built with plain Optuna plus hpo's trial attrs."""

from __future__ import annotations

import base64
import csv
import io
import math
import random
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

import hpo.diagram
from hpo.diagram import chain_mermaid, load_agent_config
from hpo.errors import ConfigError
from hpo.report import (
    Report,
    axis_scale,
    build_report,
    importance_trials_needed,
    leaderboard_rows,
    main,
)

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
SOURCES = ["baseline", "llm", "llm", "repaired", "fallback", "llm", "clamped", "fallback"]


def _add_trials(study: optuna.Study, n: int, *, multi: bool = False, seed: int = 0) -> None:
    """Trials shaped like an hpo sweep's: params, provenance attrs, per-epoch curves."""
    rng = random.Random(seed)
    dists = {
        "optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True),
        "model.label_smoothing": FloatDistribution(0.0, 0.2),
        "model": CategoricalDistribution(["mlp", "cnn"]),
        "data.batch_size": CategoricalDistribution([32, 64, 128]),
    }
    for i in range(n):
        params = {
            "optimizer.lr": 10 ** rng.uniform(-5, -1),
            "model.label_smoothing": rng.uniform(0.0, 0.2),
            "model": rng.choice(["mlp", "cnn"]),
            "data.batch_size": rng.choice([32, 64, 128]),
        }
        quality = 1.0 - abs(math.log10(params["optimizer.lr"]) + 3) / 4
        acc = round(0.5 + 0.45 * quality + (0.03 if params["model"] == "cnn" else 0.0), 4)
        source = SOURCES[i % len(SOURCES)]
        attrs: dict[str, object] = {"hpo:source": source}
        if source in ("llm", "repaired", "clamped"):
            attrs.update({
                "hpo:rationale": f"Trial {i}: lower the learning rate <b>a bit</b> & widen.",
                "hpo:tokens_in": 600 + 10 * i, "hpo:tokens_out": 200, "hpo:cost_usd": 0.0011,
            })
        epochs = list(range(4))
        attrs["curves"] = {
            "epoch": epochs,
            "val/acc": [round(acc * (0.7 + 0.1 * e), 4) for e in epochs],
            "val/loss": [round(2.0 - acc - 0.2 * e, 4) for e in epochs],
            "train/loss": [round(2.1 - acc - 0.25 * e, 4) for e in epochs],
        }
        state = TrialState.COMPLETE
        values: list[float] | None = [acc, round(1e5 * (1.5 - quality), 1)] if multi else [acc]
        intermediate = {e: acc * (0.7 + 0.1 * e) for e in epochs}
        if i == n - 2:
            state, values, intermediate = TrialState.PRUNED, None, {0: 0.3}
        if i == n - 1:
            state, values, intermediate = TrialState.FAIL, None, {}
            attrs["hpo:error"] = "CUDA out of memory\n(trace)"
        study.add_trial(create_trial(
            params=params, distributions=dists, values=values, state=state,
            user_attrs=attrs, intermediate_values=intermediate,
        ))


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, optuna.Study, Report]:
    root = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{root / 'hpo.db'}"
    study = optuna.create_study(study_name="digits-mlp", storage=url, direction="maximize")
    study.set_metric_names(["val/acc"])
    _add_trials(study, 16)  # 14 complete: enough for importances of 4 parameters
    study.set_user_attr("hpo:tokens_in_total", 5000)
    study.set_user_attr("hpo:tokens_out_total", 1400)
    study.set_user_attr("hpo:cost_usd_total", 0.0077)
    study.set_user_attr("hpo:llm_calls_total", 7)
    study.set_user_attr("hpo:fallback_total", 3)
    from optuna_dashboard import save_note

    save_note(study, "Diagnosis: underfitting <script>alert(1)</script>")
    return url, study, build_report(study, root / "out", top_k=3)


def _png_ok(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_every_file_exists_and_pngs_are_valid(single: tuple[str, optuna.Study, Report]) -> None:
    _, _, report = single
    expected = {"history", "importances", "parallel_coordinates", "learning_curves",
                "params_vs_objective", "best_by_choice", "by_source", "tokens_cost"}
    assert set(report.plots) == expected, report.skipped
    assert "pareto_front" not in report.skipped  # single objective: not even mentioned
    for name, path in report.plots.items():
        assert path == report.out_dir / f"{name}.png"
        width, height = _png_ok(path)
        assert width > 300 and height > 200
    assert report.leaderboard.is_file() and report.html.is_file()


def test_leaderboard_sorted_with_provenance(single: tuple[str, optuna.Study, Report]) -> None:
    _, study, report = single
    rows = list(csv.DictReader(io.StringIO(report.leaderboard.read_text())))
    assert len(rows) == 16
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    values = [float(r["val/acc"]) for r in complete]
    assert values == sorted(values, reverse=True)
    assert [r["rank"] for r in complete] == [str(i) for i in range(1, 15)]
    assert int(complete[0]["number"]) == study.best_trial.number
    assert [r["state"] for r in rows[-2:]] == ["PRUNED", "FAIL"]
    assert rows[-1]["error"] == "CUDA out of memory (trace)"
    columns = set(rows[0])
    assert {"params_optimizer.lr", "params_model", "source", "tokens", "cost_usd",
            "duration_s", "rationale"} <= columns
    llm = [r for r in rows if r["source"] == "llm"]
    assert llm and all(int(r["tokens"]) >= 800 and float(r["cost_usd"]) == 0.0011 for r in llm)
    assert all(r["tokens"] == "" for r in rows if r["source"] == "fallback")


def test_html_is_self_contained(single: tuple[str, optuna.Study, Report]) -> None:
    _, study, report = single
    text = report.html.read_text()
    for row in leaderboard_rows(study):
        assert f'data-number="{row["number"]}"' in text
    assert text.count("data:image/png;base64,") == len(report.plots)
    first = text.split("data:image/png;base64,", 1)[1].split('"', 1)[0]
    assert base64.b64decode(first).startswith(b"\x89PNG")
    # LLM and note text is escaped, never markup
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<b>a bit</b>" not in text and "&lt;b&gt;a bit&lt;/b&gt;" in text
    assert "7 calls" in text and "$0.0077" in text
    assert 'src="http' not in text and "<link" not in text  # nothing fetched


def test_multi_objective_has_pareto_front(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'multi.db'}"
    study = optuna.create_study(study_name="multi", storage=url,
                                directions=["maximize", "minimize"])
    study.set_metric_names(["val/acc", "params"])
    _add_trials(study, 8, multi=True, seed=1)
    report = build_report(study, tmp_path / "out")
    assert "pareto_front" in report.plots, report.skipped
    _png_ok(report.plots["pareto_front"])
    rows = list(csv.DictReader(io.StringIO(report.leaderboard.read_text())))
    front = [r for r in rows if r["pareto"] == "True"]
    assert front and rows[: len(front)] == front
    assert {int(r["number"]) for r in front} == {t.number for t in study.best_trials}


def test_tiny_study_skips_what_it_cannot_draw(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'one.db'}", study_name="one")
    study.add_trial(create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                 value=0.25))
    report = build_report(study, tmp_path / "out")
    assert "importances" in report.skipped
    assert {"by_source", "tokens_cost", "best_by_choice"} <= set(report.skipped)
    assert "history" in report.plots
    assert "Not drawn: needs 2 parameters, the study has 1" in report.html.read_text()


def test_importances_need_enough_trials_and_say_why(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="few", storage=f"sqlite:///{tmp_path / 'few.db'}",
                                direction="maximize")
    _add_trials(study, 8)  # 6 complete trials, 4 parameters
    assert importance_trials_needed(4) > 6
    report = build_report(study, tmp_path / "out")
    why = report.skipped["importances"]
    assert "6 complete trials are too few to rank 4 parameters" in why
    assert f"need {importance_trials_needed(4)}" in why
    assert not (report.out_dir / "importances.png").exists()
    html = report.html.read_text()
    caption = html.index('data-plot="importances"')  # in the plot's place, between its peers
    assert html.index('alt="history"') < caption < html.index('alt="parallel_coordinates"')


@pytest.mark.parametrize(("values", "scale"), [
    ([1.2e3, 5e4, 2.1e6], "log"),  # parameter counts: decades apart
    ([0.75, 0.81, 0.94], "linear"),  # accuracies
    ([-1.0, 50.0], "linear"),  # not all positive
    ([3e-4, 2e-3, math.nan], "linear"),  # within one decade once the nan is dropped
])
def test_axis_scale_follows_the_data(values: list[float], scale: str) -> None:
    assert axis_scale(values) == scale


def test_pareto_draws_a_log_objective(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="nas", storage=f"sqlite:///{tmp_path / 'nas.db'}",
                                directions=["maximize", "minimize"])
    study.set_metric_names(["val/acc", "params"])
    dist = {"width": FloatDistribution(8, 4096, log=True)}
    for w in (8, 32, 128, 512, 2048, 4096):
        study.add_trial(create_trial(params={"width": w}, distributions=dist,
                                     values=[0.6 + 0.05 * math.log2(w) / 2, 100.0 * w * w]))
    report = build_report(study, tmp_path / "out")
    assert "pareto_front" in report.plots, report.skipped
    assert axis_scale([t.values[1] for t in study.trials]) == "log"
    _png_ok(report.plots["pareto_front"])


def test_cli_writes_report(single: tuple[str, optuna.Study, Report], tmp_path: Path) -> None:
    url, _, _ = single
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.report", "--storage", url, "--study", "digits-mlp",
         "--out", str(out)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.html").is_file() and (out / "leaderboard.csv").is_file()
    assert len(list(out.glob("*.png"))) == 8
    assert "report.html" in proc.stdout


def test_cli_errors_are_one_line(single: tuple[str, optuna.Study, Report], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    url, _, _ = single
    cases = [
        (["--storage", url, "--study", "nope"], "study 'nope' is not in storage"),
        (["--storage", f"sqlite:///{tmp_path / 'missing.db'}"], "does not exist"),
        (["--storage", "postgresql://hpo@127.0.0.1:1/none"], "cannot open storage"),
        (["--storage", "not-a-url"], "is not a URL"),
        (["--storage", url, "--top-k", "0"], "--top-k 0 is invalid"),
    ]
    for args, message in cases:
        assert main([*args, "--out", str(tmp_path / "o")]) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, lines)
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- hpo.diagram


@pytest.mark.parametrize(
    ("chain", "nodes", "absent"),
    [
        ("single", ["proposer[", "proposer -->|proposals| checker"], ["analyst[", "planner["]),
        ("diagnose", ["analyst[", "analyst -->|diagnosis| proposer", "history --> analyst"],
         ["supervisor["]),
        ("consultants", ["consultant_a <-->|3 turns| consultant_b", "supervisor -->|proposals|"],
         ["proposer["]),
        ("planner", ["planner[", "planner -.->|stop| stop"], ["proposer["]),
    ],
)
def test_chain_mermaid_per_chain(chain: str, nodes: list[str], absent: list[str]) -> None:
    text = chain_mermaid({"provider": "claude", "chain": chain, "consultant_turns": 3})
    assert text.startswith("flowchart TD\n") and text.endswith("\n")
    for node in [*nodes, "storage[(", "checker{", "checker -->|invalid| repair --> recheck",
                 "clamp --> trial", "fallback --> trial", "trial -->|ask, launch, tell| storage",
                 f"agent chain: {chain} (claude / preset default model)"]:
        assert node in text, node
    for node in absent:
        assert node not in text, node


def test_chain_mermaid_options_and_escaping() -> None:
    text = chain_mermaid({
        "provider": "openai", "model": 'gpt-"x"<1>', "chain": "diagnose", "researcher": True,
        "fallback_share": 0.25, "budget": {"max_tokens": None, "max_usd": 2.5}, "cache": True,
        "roles": {"analyst": {"model": "small-model"}},
    }, fallback_sampler="RandomSampler", storage="sqlite:///hpo.db")
    assert "analyst --> researcher --> proposer" in text
    assert "fallback_share 25% of trials" in text and "budget spent (max_usd=2.5)" in text
    assert "(openai / small-model)" in text and "reply cache" in text
    assert "RandomSampler" in text and "sqlite:///hpo.db" in text
    assert 'gpt-#quot;x#quot;#lt;1#gt;' in text and '"x"' not in text
    none = chain_mermaid({"provider": "none", "chain": "planner"})
    assert "storage --> history --> fallback" in none and "planner" not in none
    with pytest.raises(ConfigError, match=r"agent\.chain='debate' is unknown"):
        chain_mermaid({"chain": "debate"})


def test_chain_mermaid_draws_a_list_of_stages_and_the_hybrid_mode() -> None:
    text = chain_mermaid({"provider": "openai", "chain": ["analyst", "consultants",
                                                         "supervisor", "checker"],
                          "researcher": True, "consultant_turns": 1})
    assert "agent chain: analyst+consultants+supervisor" in text
    for edge in ["history --> analyst", "analyst --> researcher --> consultant_a",
                 "consultant_a <-->|1 turn| consultant_b", "consultant_b --> supervisor",
                 "supervisor -->|proposals| checker"]:
        assert edge in text, edge
    hybrid = chain_mermaid({"provider": "openai", "chain": "single", "mode": "hybrid",
                            "leader": "cmaes", "llm_share": 0.3, "adaptive_share": False})
    assert "Leader: classical sampler<br/>agent.leader=cmaes" in hybrid
    assert "fallback -->|its state: mean, step size, best trials| proposer" in hybrid
    assert "llm_share 30% of trials" in hybrid and "bandit" not in hybrid
    assert "LLM floor 5%" in chain_mermaid({"provider": "openai"})


@pytest.mark.parametrize(("cfg", "needle"), [
    ({"temperature": 3}, "agent.temperature=3"),
    ({"chain": ["proposer", "planner"]}, "has 2 proposing stages"),
    ({"roles": {"critic": {}}}, "agent.roles.critic is not a role"),
])
def test_chain_mermaid_checks_the_config_as_the_sweep_does(cfg: dict[str, object],
                                                          needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        chain_mermaid(cfg)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_diagram_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_agent_config("claude")["provider"] == "claude"
    proc = subprocess.run([sys.executable, "-m", "hpo.diagram"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("flowchart TD") and "agent chain: diagnose (auto" in proc.stdout

    monkeypatch.setattr(hpo.diagram, "MMDC", "mmdc-not-installed-here")
    png = tmp_path / "chain.png"
    assert hpo.diagram.main(["--agent", "claude", "--chain", "consultants", "--png",
                             str(png)]) == 0
    out = capsys.readouterr().out
    assert "no PNG: the Mermaid CLI (mmdc-not-installed-here) is not installed" in out
    assert not png.exists()
    assert "consultant_a <-->" in (tmp_path / "chain.mmd").read_text()
    assert hpo.diagram.main(["--agent", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: agent preset 'nope' is unknown")
    assert hpo.diagram.main(["--agent", "claude", "--chain", "analyst,planner"]) == 0
    assert "analyst --> planner" in capsys.readouterr().out
    assert hpo.diagram.main(["--chain", "debate"]) == 2
    assert capsys.readouterr().err.startswith("error: agent.chain='debate' is unknown")
