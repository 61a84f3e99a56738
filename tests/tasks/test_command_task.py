"""The external-command task, module by module (spec, params, metrics, process) and whole:
failures, timeouts, reporting to a real SQLite study (per fold under cv), and (slow) CLI sweeps
of examples/command/train_toy.py."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT, clean_env, run_cli
from hpo import trial_context
from hpo.attrs import trial_output_dir
from hpo.errors import ConfigError, MetricNotFoundError
from hpo.tasks.command import (
    LOG_FILE,
    CommandError,
    CommandFailedError,
    CommandSpec,
    CommandTimeoutError,
    CurvesFile,
    MetricsTable,
    env_name,
    read_metrics,
    render_args,
    run,
)
from hpo.tasks.command.params import prepare
from hpo.tasks.command.process import failure, supervise

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_cfg(objective: Any = "score", cv: dict[str, int] | None = None, **command: Any) -> Any:
    base: dict[str, Any] = {
        "argv": None, "shell": None, "params": {}, "params_file": None, "env": {},
        "metrics_file": "metrics.json", "curves_file": None, "objective_key": None,
        "report_key": None, "reduce": "last", "timeout_s": 60, "poll_s": 0.2, "prune": True,
    }
    base.update(command)
    cfg: dict[str, Any] = {"command": base, "objective": objective, "seed": 7}
    if cv is not None:
        cfg["cv"] = cv
    return OmegaConf.create(cfg)


def py(code: str) -> list[str]:
    """argv running ``code`` with this interpreter."""
    return ["{python}", "-c", textwrap.dedent(code)]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path (the output dir outside Hydra), with no trial context."""
    monkeypatch.chdir(tmp_path)
    for var in (trial_context.ENV_STORAGE, trial_context.ENV_STUDY,
                trial_context.ENV_TRIAL_NUMBER, trial_context.ENV_TRIAL_ID,
                trial_context.ENV_PRUNER):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


# --- rendering ---------------------------------------------------------------------------------


def test_render_args_placeholders() -> None:
    values = {"params.lr": 0.001, "lr": 0.001, "params.opt.name": "adam", "python": "/py",
              "params.flag": True, "params.tiny": 1e-05}
    assert render_args("--lr={params.lr}", values) == "--lr=0.001"
    assert render_args("--lr={lr}", values) == "--lr=0.001"
    assert render_args("{python}", values) == "/py"
    assert render_args("--o={params.opt.name}", values) == "--o=adam"
    assert render_args("{params.flag}/{params.tiny}", values) == "true/1e-05"
    # braces that are not placeholders pass untouched (JSON, shell code)
    assert render_args('{"a": 1} {unknown}', values) == '{"a": 1} {unknown}'
    with pytest.raises(ConfigError, match=r"placeholder \{params.lrr\} names no parameter.*"
                                          r"\+command.params.lrr"):
        render_args("--lr={params.lrr}", values)


def test_render_shell_quotes_every_value() -> None:
    evil = "x'; touch pwned; echo '"
    out = render_args("echo {params.s} > out.txt", {"params.s": evil}, quote=True)
    assert out == "echo 'x'\"'\"'; touch pwned; echo '\"'\"'' > out.txt"


def test_env_name() -> None:
    assert env_name("lr") == "HPO_PARAM_LR"
    assert env_name("model.net-width") == "HPO_PARAM_MODEL_NET_WIDTH"


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ({}, "both unset: give exactly one"),
        ({"argv": ["a"], "shell": "a"}, "both set"),
        ({"argv": []}, "command.argv=[] is empty"),
        ({"argv": ["a"], "reduce": "best"}, "command.reduce='best' is unknown"),
        ({"argv": ["a"], "timeout_s": 0}, "command.timeout_s=0.0 must be positive"),
        ({"argv": ["a"], "params_file": "p.txt"}, "neither .json nor .yaml"),
        ({"argv": ["a"], "metrics_file": "m.txt"}, "neither .json nor .csv"),
        ({"argv": ["a"], "curves_file": "c.json"}, "is not a .csv"),
        ({"argv": "python train.py"}, "is not a list"),
    ],
)
def test_spec_rejects_bad_config(command: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        CommandSpec.from_cfg(make_cfg(**command))


def test_spec_defaults_from_objective() -> None:
    spec = CommandSpec.from_cfg(make_cfg(objective=["a", "b"], argv=["x"],
                                         metrics_file="m.csv", params={"o": {"lr": 1}}))
    assert spec.objective_keys == ["a", "b"]
    assert spec.curves_file == "m.csv"  # a CSV metrics file is also the curves file
    assert spec.params == {"o.lr": 1}


# --- metrics files -----------------------------------------------------------------------------


def test_read_json_dotted_literal_and_per_class(tmp_path: Path) -> None:
    p = tmp_path / "metrics.json"
    p.write_text(json.dumps({"val": {"acc": 0.9, "loss": "0.3"}, "val/f1": 0.8,
                             "per_class": {"f1": {"cat": 0.5, "dog": 0.75}}}))
    m = read_metrics(p, ["val.acc", "val/f1", "val.loss"])
    assert m.values == [0.9, 0.8, 0.3]
    assert m.per_class == {"f1": {"cat": 0.5, "dog": 0.75}}
    with pytest.raises(MetricNotFoundError, match=r"'val.mse' is not in metrics.json; it has "
                                                  r"val.acc, val.loss, val/f1"):
        read_metrics(p, ["val.mse"])
    p.write_text(json.dumps({"score": [1, 2]}))
    with pytest.raises(CommandError, match="not a number"):
        read_metrics(p, ["score"])
    p.write_text("{not json")
    with pytest.raises(CommandError, match="not valid JSON"):
        read_metrics(p, ["score"])
    with pytest.raises(CommandError, match="wrote no metrics file"):
        read_metrics(tmp_path / "missing.json", ["score"])


CSV = """epoch,train/loss,val/acc,val/loss,f1_class_cat,f1_class_dog
0,1.0,0.5,0.9,0.4,0.6
1,0.5,0.8,0.6,0.7,0.9
2,0.3,0.7,0.7,0.6,0.8
"""


@pytest.mark.parametrize(("reduce", "acc", "loss", "cat"),
                         [("last", 0.7, 0.7, 0.6), ("max", 0.8, 0.6, 0.7),
                          ("min", 0.5, 0.9, 0.4)])
def test_read_csv_reduce(tmp_path: Path, reduce: str, acc: float, loss: float,
                         cat: float) -> None:
    p = tmp_path / "metrics.csv"
    p.write_text(CSV)
    m = read_metrics(p, ["val.acc", "val/loss"], reduce=reduce)  # val.acc finds val/acc
    assert m.values == [acc, loss]
    assert m.per_class == {"f1": {"cat": cat, "dog": pytest.approx(m.per_class["f1"]["dog"])}}
    assert m.table is not None
    assert m.table.curves() == {"epoch": [0, 1, 2], "train/loss": [1.0, 0.5, 0.3],
                                "val/acc": [0.5, 0.8, 0.7], "val/loss": [0.9, 0.6, 0.7]}
    with pytest.raises(MetricNotFoundError, match="objective column 'val/f1' is not in"):
        read_metrics(p, ["val/f1"])


def test_csv_torn_last_line_is_ignored_while_running() -> None:
    table = MetricsTable.parse("epoch,acc\n0,0.5\n1,0.", complete_lines_only=True)
    assert table.rows == [[0.0, 0.5]]
    assert MetricsTable.parse("step,acc\n0,0.5\n3,\n").step_of(1) == 3


# --- params: handing them to the program ------------------------------------------------------


def test_prepare_renders_args_env_and_file(tmp_path: Path) -> None:
    spec = CommandSpec.from_cfg(make_cfg(
        argv=["{python}", "t.py", "--lr={params.lr}", "--f={fold}/{folds}", "--o={output_dir}"],
        params={"lr": 0.5, "opt": {"name": "sgd"}}, params_file="p.json",
        env={"TAG": "{params.opt.name}-{seed}"},
    ))
    call = prepare(spec, tmp_path, trial_number=4, seed=7, fold=2, folds=3,
                   environ={"PATH": "/bin", "OPENAI_API_KEY": "sk-x", "KEEP": "1"})
    assert call.args == [sys.executable, "t.py", "--lr=0.5", "--f=2/3", f"--o={tmp_path}"]
    env = call.env
    assert env["HPO_FOLD"] == "2" and env["HPO_FOLDS"] == "3" and env["HPO_SEED"] == "7"
    assert env["HPO_PARAM_OPT_NAME"] == "sgd" and env["TAG"] == "sgd-7"
    assert env["KEEP"] == "1" and "OPENAI_API_KEY" not in env
    assert call.params_path == tmp_path / "p.json"
    assert json.loads((tmp_path / "p.json").read_text()) == {"lr": 0.5, "opt.name": "sgd"}
    assert env["HPO_PARAMS_FILE"] == str(tmp_path / "p.json")


def test_prepare_quotes_a_shell_line(tmp_path: Path) -> None:
    spec = CommandSpec.from_cfg(make_cfg(shell="run {params.s} {trial_number}",
                                         params={"s": "a b"}))
    call = prepare(spec, tmp_path, environ={})
    assert call.args == "run 'a b' ''" and call.shown == call.args
    assert call.env["HPO_FOLD"] == "0" and call.env["HPO_FOLDS"] == "1"
    assert "HPO_SEED" not in call.env and call.params_path is None


# --- process: supervising a real child -----------------------------------------------------------


def test_supervise_copies_output_and_masks_secrets(tmp_path: Path) -> None:
    code = "import sys; print('key sk-secret-1 out'); print('bad', file=sys.stderr); sys.exit(5)"
    end = supervise([sys.executable, "-c", code], cwd=tmp_path, env={"PATH": "/usr/bin"},
                    secrets=["sk-secret-1"], poll_s=0.05)
    assert end.code == 5 and not end.stopped and end.stderr_tail == ["bad"]
    text = (tmp_path / LOG_FILE).read_text()
    assert "key *** out" in text and "sk-secret-1" not in text and "bad" in text
    assert str(failure(end)).startswith("the command exited with code 5 after")


def test_supervise_stops_the_child_when_asked(tmp_path: Path) -> None:
    polls: list[int] = []

    def on_poll() -> bool:
        polls.append(1)
        return len(polls) >= 3

    code = "import time; open('started', 'w').close(); time.sleep(60)"
    end = supervise([sys.executable, "-c", code], cwd=tmp_path, env={}, poll_s=0.1,
                    on_poll=on_poll, grace_s=2.0)
    assert end.stopped and len(polls) == 3 and end.code < 0  # ended by SIGTERM
    assert (tmp_path / "started").exists()


def test_supervise_names_a_killing_signal(tmp_path: Path) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    end = supervise([sys.executable, "-c", code], cwd=tmp_path, env={}, poll_s=0.05)
    assert end.code == -9
    assert "the command was killed by SIGKILL after" in str(failure(end))
    with pytest.raises(CommandTimeoutError, match=r"timeout_s=0\.3 s"):
        supervise([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path,
                  env={}, timeout_s=0.3, poll_s=0.05, grace_s=1.0)


# --- metrics: the live curves file ---------------------------------------------------------------


def test_curves_file_reads_only_changes_and_complete_rows(tmp_path: Path) -> None:
    curves = CurvesFile(tmp_path / "c.csv")
    assert curves.poll() is None and curves.read() is None  # not written yet
    (tmp_path / "c.csv").write_text("epoch,acc\n0,0.5\n1,0.")
    table = curves.poll()
    assert table is not None and table.rows == [[0.0, 0.5]]
    assert curves.poll() is None  # unchanged since the last look
    full = curves.read()
    assert full is not None and full.rows == [[0.0, 0.5], [1.0, 0.0]]


# --- running -----------------------------------------------------------------------------------

WRITER = """
import json, os, sys
from pathlib import Path
cwd = os.getcwd()
json.dump({
    "score": float(sys.argv[1]) * 2,
    "argv": sys.argv[1:],
    "cwd": cwd,
    "env": {k: v for k, v in os.environ.items() if k.startswith("HPO_") or k.endswith("_KEY")},
    "file": json.loads(Path("params.json").read_text()),
}, open("metrics.json", "w"))
print("hello from the child")
print("warning line", file=sys.stderr)
"""


def test_run_renders_args_env_and_file(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-value")
    cfg = make_cfg(argv=[*py(WRITER), "{params.lr}", "--w={params.model.width}", "{seed}"],
                   params={"lr": 0.25, "model": {"width": 8}}, params_file="params.json",
                   env={"EXTRA": "w{params.model.width}"})
    assert run(cfg) == 0.5
    doc = json.loads((in_tmp / "metrics.json").read_text())
    assert doc["argv"] == ["0.25", "--w=8", "7"]
    assert Path(doc["cwd"]).resolve() == in_tmp.resolve()
    env = doc["env"]
    assert env["HPO_PARAM_LR"] == "0.25" and env["HPO_PARAM_MODEL_WIDTH"] == "8"
    assert json.loads(env["HPO_PARAMS_JSON"]) == {"lr": 0.25, "model.width": 8}
    assert Path(env["HPO_OUTPUT_DIR"]).resolve() == in_tmp.resolve()
    assert env["HPO_SEED"] == "7"
    assert Path(env["HPO_PARAMS_FILE"]).name == "params.json"
    assert "ANTHROPIC_API_KEY" not in env  # no API key reaches the program
    assert doc["file"] == {"lr": 0.25, "model.width": 8}
    log_text = (in_tmp / LOG_FILE).read_text()
    assert "hello from the child" in log_text and "warning line" in log_text


def test_run_yaml_params_file_and_shell(in_tmp: Path) -> None:
    evil = "a'; touch pwned; echo 'b"
    cfg = make_cfg(
        shell=("printf '%s' {params.s} > got.txt && {python} -c "
               "'import json; json.dump(dict(score=1), open(\"metrics.json\", \"w\"))'"),
        params={"s": evil, "n": 3}, params_file="p.yaml",
    )
    assert run(cfg) == 1.0
    assert (in_tmp / "got.txt").read_text() == evil
    assert not (in_tmp / "pwned").exists()
    assert OmegaConf.load(in_tmp / "p.yaml") == {"s": evil, "n": 3}


def test_run_multi_objective_csv(in_tmp: Path) -> None:
    code = """
    import csv
    with open("m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "val/acc", "size"])
        for e, acc in enumerate([0.2, 0.9, 0.6]):
            w.writerow([e, acc, 100 + e])
    """
    cfg = make_cfg(objective=["val/acc", "size"], argv=py(code), metrics_file="m.csv",
                   reduce="max")
    assert run(cfg) == [0.9, 101.0]


def test_nonzero_exit_fails_with_code_and_stderr_tail(in_tmp: Path) -> None:
    code = """
    import sys
    for i in range(8):
        print(f"line {i}", file=sys.stderr)
    print("Traceback: ValueError: bad lr", file=sys.stderr)
    sys.exit(4)
    """
    with pytest.raises(CommandFailedError) as info:
        run(make_cfg(argv=py(code)))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("the command exited with code 4 after")
    assert "line 7 | Traceback: ValueError: bad lr" in msg and "line 2" not in msg


def test_missing_program_and_missing_metrics(in_tmp: Path) -> None:
    with pytest.raises(CommandError, match="cannot start 'no-such-program-xyz'"):
        run(make_cfg(argv=["no-such-program-xyz"]))
    with pytest.raises(CommandError, match="wrote no metrics file"):
        run(make_cfg(argv=py("print('no metrics')")))


def test_stale_metrics_of_an_earlier_run_are_not_read(in_tmp: Path) -> None:
    (in_tmp / "metrics.json").write_text('{"score": 1}')
    with pytest.raises(CommandError, match="wrote no metrics file"):
        run(make_cfg(argv=py("pass")))


def test_timeout_kills_the_process_group(in_tmp: Path) -> None:
    code = """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open("child.pid", "w").write(str(child.pid))
    time.sleep(60)
    """
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError, match=r"command.timeout_s=1.5 s and was killed"):
        run(make_cfg(argv=py(code), timeout_s=1.5))
    assert time.monotonic() - started < 10
    pid = int((in_tmp / "child.pid").read_text())
    time.sleep(0.2)
    assert not alive(pid)  # the grandchild is gone too


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- reporting to a real study -----------------------------------------------------------------

CURVE = """
import csv, json, sys, time
accs = [float(a) for a in sys.argv[1].split(",")]
with open("curve.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["epoch", "train/loss", "val/acc", "f1_class_a", "f1_class_b"])
    f.flush()
    for e, acc in enumerate(accs):
        w.writerow([e, 1 - acc, acc, acc / 2, acc])
        f.flush()
        time.sleep(float(sys.argv[2]))
json.dump({"val": {"acc": accs[-1]}}, open("result.json", "w"))
"""


def open_trial_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       pruner: optuna.pruners.BasePruner | None = None,
                       directions: tuple[str, ...] = ("maximize",)) -> tuple[str, int]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="cmd", storage=url, directions=list(directions))
    trial = study.ask()
    ctx = trial_context.TrialContext(storage=url, study_name="cmd",
                                     trial_number=trial.number, trial_id=trial._trial_id)
    for k, v in ctx.env().items():
        monkeypatch.setenv(k, v)
    if pruner is not None:
        monkeypatch.setenv(trial_context.ENV_PRUNER, trial_context.encode_pruner(pruner))
    return url, trial.number


def test_reports_curves_and_per_class(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, number = open_trial_context(in_tmp, monkeypatch)
    cfg = make_cfg(objective="val/acc", argv=[*py(CURVE), "0.3,0.6,0.7", "0.05"],
                   metrics_file="result.json", curves_file="curve.csv", objective_key="val.acc",
                   poll_s=0.05)
    assert run(cfg) == 0.7
    t = optuna.load_study(study_name="cmd", storage=url).trials[number]
    assert t.intermediate_values == {0: 0.3, 1: 0.6, 2: 0.7}
    assert t.user_attrs["curves"] == {"epoch": [0, 1, 2], "train/loss": [0.7, 0.4, 0.3],
                                      "val/acc": [0.3, 0.6, 0.7]}
    # per_class from the curves CSV is not used when the metrics file is JSON without it
    assert "per_class" not in t.user_attrs


def test_csv_per_class_reaches_trial_attrs(in_tmp: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    url, number = open_trial_context(in_tmp, monkeypatch)
    cfg = make_cfg(objective="val/acc", argv=[*py(CURVE), "0.4,0.8", "0"],
                   metrics_file="curve.csv", reduce="max")
    assert run(cfg) == 0.8
    t = optuna.load_study(study_name="cmd", storage=url).trials[number]
    assert t.user_attrs["per_class"] == {"f1": {"a": 0.4, "b": 0.8}}
    assert t.intermediate_values == {0: 0.4, 1: 0.8}


def test_each_fold_keeps_its_per_class_and_curves(in_tmp: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """cv.folds=2: both fold jobs of one trial write their own keys; only fold 0 reports."""
    url, number = open_trial_context(in_tmp, monkeypatch)
    for fold, accs in ((0, "0.4,0.8"), (1, "0.3,0.5,0.6")):
        cfg = make_cfg(objective="val/acc", argv=[*py(CURVE), accs, "0"], metrics_file="curve.csv",
                       cv={"folds": 2, "fold": fold})
        run(cfg)
    attrs = optuna.load_study(study_name="cmd", storage=url).trials[number].user_attrs
    assert "per_class" not in attrs and "curves" not in attrs
    assert attrs["per_class_fold_0"] == {"f1": {"a": 0.4, "b": 0.8}}
    assert attrs["per_class_fold_1"] == {"f1": {"a": 0.3, "b": 0.6}}
    assert attrs["curves_fold_0"]["val/acc"] == [0.4, 0.8]
    assert attrs["curves_fold_1"]["val/acc"] == [0.3, 0.5, 0.6]
    t = optuna.load_study(study_name="cmd", storage=url).trials[number]
    assert t.intermediate_values == {0: 0.4, 1: 0.8}  # fold 0's


def test_pruner_stops_the_command(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, number = open_trial_context(
        in_tmp, monkeypatch, pruner=optuna.pruners.ThresholdPruner(lower=0.5)
    )
    cfg = make_cfg(objective="val/acc", argv=[*py(CURVE), "0.1,0.2,0.3,0.4,0.5,0.6", "1.0"],
                   metrics_file="result.json", curves_file="curve.csv", objective_key="val.acc",
                   poll_s=0.1)
    started = time.monotonic()
    with pytest.raises(optuna.TrialPruned, match="pruned at step 0"):
        run(cfg)
    assert time.monotonic() - started < 4  # not the 6 s the program would take
    t = optuna.load_study(study_name="cmd", storage=url).trials[number]
    assert t.user_attrs["pruned_at_epoch"] == 0
    assert not (in_tmp / "result.json").exists()


def test_multi_objective_study_gets_curves_but_no_reports(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, number = open_trial_context(in_tmp, monkeypatch, directions=("maximize", "minimize"))
    cfg = make_cfg(objective=["val/acc", "train/loss"], argv=[*py(CURVE), "0.4,0.8", "0"],
                   metrics_file="curve.csv")
    assert run(cfg) == [0.8, pytest.approx(0.2)]
    t = optuna.load_study(study_name="cmd", storage=url).trials[number]
    assert t.intermediate_values == {}
    assert t.user_attrs["curves"]["val/acc"] == [0.4, 0.8]


# --- the CLI -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_sweep_of_the_toy_script(tmp_path: Path) -> None:
    """The command of examples/command/README.md, shrunk; one trial fails on purpose."""
    db = tmp_path / "s.db"
    args = [
        "-m", "hpo.train", "--config-name", "command", "-m", "+experiment=toy_command",
        "agent=none", f"hydra.sweeper.storage=sqlite:///{db}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", "command.params.epochs=3",
    ]
    run_cli([*args, "hydra.sweeper.n_trials=3"], cwd=REPO_ROOT, env=clean_env(), timeout=300)
    study = optuna.load_study(study_name="toy_command", storage=f"sqlite:///{db}")
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:
        assert 0.0 < t.value <= 1.0
        assert sorted(t.intermediate_values) == [0, 1, 2]
        assert t.intermediate_values[2] == pytest.approx(t.value, abs=1e-6)
        assert sorted(t.user_attrs["per_class"]["f1"]) == [str(i) for i in range(10)]
        assert {"train/loss", "val/acc"} <= set(t.user_attrs["curves"])
        out = Path(str(trial_output_dir(t.number, t.user_attrs, study.user_attrs)))
        assert (out / LOG_FILE).is_file() and (out / "metrics.json").is_file()
    assert trials[0].params["command.params.lr"] == pytest.approx(1e-3)  # baseline first

    # a failing program: the trial fails with its exit code and stderr in hpo:error
    run_cli([*args, "hydra.sweeper.n_trials=4", "+command.env.TOY_FAIL_AT_EPOCH=1",
             "hydra.sweeper.max_failure_rate=1.0"],
            cwd=REPO_ROOT, env=clean_env(), timeout=300)
    failed = optuna.load_study(study_name="toy_command", storage=f"sqlite:///{db}").trials[3]
    assert failed.state.name == "FAIL"
    assert failed.user_attrs["hpo:error"].startswith(
        "CommandFailedError: the command exited with code 3 after"
    )
    assert "simulated failure at epoch 1" in failed.user_attrs["hpo:error"]


def test_python_placeholder_is_this_interpreter(in_tmp: Path) -> None:
    code = "import json, sys; json.dump({'score': 1.0, 'exe': sys.executable}, " \
           "open('metrics.json', 'w'))"
    run(make_cfg(argv=["{python}", "-c", code]))
    exe = json.loads((in_tmp / "metrics.json").read_text())["exe"]
    assert Path(exe).resolve() == Path(sys.executable).resolve()


@pytest.mark.slow
def test_cli_command_line_only(tmp_path: Path) -> None:
    """The docs/workloads.md form: argv, a new parameter and the metrics, all as overrides."""
    script = REPO_ROOT / "examples" / "command" / "train_toy.py"
    db = tmp_path / "s.db"
    run_cli(
        ["-m", "hpo.train", "--config-name", "command", "-m", "agent=none",
         "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage=sqlite:///{db}",
         f'command.argv=["{{python}}","{script}","--lr={{params.lr}}","--epochs=2"]',
         "+command.params.lr=tag(log, interval(1e-4, 1e-1))",
         "command.metrics_file=metrics.json", "command.objective_key=val.acc",
         "objective=val/acc"],
        cwd=tmp_path, env=clean_env(), timeout=300,
    )
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
    assert study.metric_names == ["val/acc"]
    for t in study.trials:
        assert t.state.name == "COMPLETE" and 0.0 < t.value <= 1.0
        out = Path(str(trial_output_dir(t.number, t.user_attrs, study.user_attrs)))
        log_text = (out / "command.log").read_text()
        assert f"--lr={t.params['command.params.lr']!r}" in log_text


@pytest.mark.slow
def test_cli_cv_folds_on_the_command_task(tmp_path: Path) -> None:
    """`cv.folds=2` as documented (no `+`): two fold jobs per trial, each keeps its per-class
    scores and curves; the program validates on its own fold."""
    db = tmp_path / "s.db"
    run_cli(
        ["-m", "hpo.train", "--config-name", "command", "-m", "+experiment=toy_command",
         "agent=none", "cv.folds=2", "hydra.sweeper.n_trials=1", "command.params.epochs=2",
         f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=REPO_ROOT, env=clean_env(), timeout=300,
    )
    (t,) = optuna.load_study(study_name="toy_command", storage=f"sqlite:///{db}").trials
    assert t.state.name == "COMPLETE"
    assert len(t.user_attrs["folds"]) == 2
    per_fold = [t.user_attrs[f"per_class_fold_{i}"]["f1"] for i in range(2)]
    assert all(sorted(p) == [str(c) for c in range(10)] for p in per_fold)
    assert per_fold[0] != per_fold[1]  # two different validation folds
    for i in range(2):
        assert t.user_attrs[f"curves_fold_{i}"]["epoch"] == [0, 1]
    # the trial's per_class is the mean across folds, its spread beside it (what the analyst
    # reads as mean ± std per class)
    mean, std = t.user_attrs["per_class"]["f1"], t.user_attrs["per_class_std"]["f1"]
    for c in per_fold[0]:
        pair = [per_fold[0][c], per_fold[1][c]]
        assert mean[c] == pytest.approx(sum(pair) / 2, abs=1e-6)
        assert std[c] >= 0 and (std[c] > 0) == (pair[0] != pair[1])
