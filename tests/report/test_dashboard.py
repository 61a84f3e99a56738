"""``python -m hpo.dashboard``: the real optuna-dashboard on a SQLite study with a note and
artifacts, checked over its HTTP API and rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna_dashboard import save_note
from PIL import Image

from _services import chromium_argv
from hpo.artifacts import upload_trial_artifacts
from hpo.dashboard import main as dashboard_main

NOTE = "Proposer: halve the learning rate (quokka-7341)"
STUDY_NOTE = "Diagnosis: the study underfits (wombat-2219)"
STARTUP_S = 60


@dataclass(frozen=True)
class Dashboard:
    url: str
    study_id: int
    trial_id: int
    storage_url: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        return bytes(resp.read())


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{root / 'hpo.db'}"
    study = optuna.create_study(study_name="dash-study", storage=url, direction="maximize")
    save_note(study, STUDY_NOTE)
    trial = study.ask({"optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True)})
    trial.set_user_attr("hpo:source", "llm")
    save_note(trial, NOTE)
    out = root / "job0"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch,val/acc\n0,0.8\n1,0.9\n")
    Image.new("RGB", (120, 60), "darkorange").save(out / "curves.png")
    assert len(upload_trial_artifacts(study, trial._trial_id, out, url)) == 2
    study.tell(trial, 0.9)

    port = _free_port()
    log = (root / "dashboard.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo.dashboard", "--storage", url, "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                _get(f"{base}/api/meta")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (root / "dashboard.log").read_text()[-3000:]
                    pytest.fail(f"the dashboard did not start:\n{tail}")
                time.sleep(0.3)
        yield Dashboard(url=base, study_id=study._study_id, trial_id=trial._trial_id,
                        storage_url=url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_api_lists_study_note_and_artifacts(dashboard: Dashboard) -> None:
    studies = json.loads(_get(f"{dashboard.url}/api/studies"))["study_summaries"]
    assert [(s["study_id"], s["study_name"]) for s in studies] == [
        (dashboard.study_id, "dash-study")]
    detail = json.loads(_get(f"{dashboard.url}/api/studies/{dashboard.study_id}"))
    assert detail["note"]["body"] == STUDY_NOTE
    (trial,) = detail["trials"]
    assert trial["note"]["body"] == NOTE
    artifacts = {a["filename"]: a for a in trial["artifacts"]}
    assert set(artifacts) == {"metrics.csv", "curves.png"}
    png = _get(f"{dashboard.url}/artifacts/{dashboard.study_id}/{dashboard.trial_id}/"
               f"{artifacts['curves.png']['artifact_id']}")
    assert png.startswith(b"\x89PNG")
    csv = _get(f"{dashboard.url}/artifacts/{dashboard.study_id}/{dashboard.trial_id}/"
               f"{artifacts['metrics.csv']['artifact_id']}")
    assert csv.decode().startswith("epoch,val/acc")


def test_cli_errors_are_one_line(dashboard: Dashboard, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    port = int(dashboard.url.rsplit(":", 1)[1])  # taken by the fixture's dashboard
    cases = [
        (["--storage", f"sqlite:///{tmp_path / 'missing.db'}"], "does not exist"),
        (["--storage", dashboard.storage_url, "--port", str(port)], "cannot listen on"),
        (["--storage", dashboard.storage_url, "--port", "70000"], "--port 70000 is invalid"),
        (["--storage", "postgresql://hpo@127.0.0.1:1/none"], "cannot open storage"),
    ]
    for args, message in cases:
        assert dashboard_main(args) == 2, args
        errors = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (args, errors)
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.browser
def test_trial_page_renders_note_and_artifacts(dashboard: Dashboard, chromium_path: str,
                                               tmp_path: Path) -> None:
    page = f"{dashboard.url}/dashboard/studies/{dashboard.study_id}/trials"
    dom = subprocess.run(
        chromium_argv(chromium_path, tmp_path / "profile", "--dump-dom",
                      "--virtual-time-budget=10000", page),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert NOTE in dom.stdout  # the JS app fetched the trial and rendered its note
    assert "curves.png" in dom.stdout and "metrics.csv" in dom.stdout

    shot = tmp_path / "trial-page.png"
    done = subprocess.run(
        chromium_argv(chromium_path, tmp_path / "profile2", "--window-size=1400,1000",
                      "--virtual-time-budget=10000", f"--screenshot={shot}", page),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1400, 1000)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50  # a rendered page, not a blank one
