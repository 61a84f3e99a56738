"""hpo.artifacts: where the store lives, and uploads to a real SQLite study."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna.distributions import FloatDistribution
from PIL import Image

from hpo.artifacts import (
    ARTIFACT_DIR_ENV,
    SERVER_ARTIFACT_DIR,
    artifact_dir_for,
    artifact_store_for,
    upload_trial_artifacts,
)

DISTS = {"x": FloatDistribution(0.0, 1.0)}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///outputs/hpo.db", Path("outputs/hpo.db.artifacts")),
        ("sqlite:////abs/dir/hpo.db", Path("/abs/dir/hpo.db.artifacts")),
        ("sqlite:///hpo.db?timeout=60", Path("hpo.db.artifacts")),
        ("journal:///shared/hpo.log", Path("/shared/hpo.log.artifacts")),
        ("journal://rel/hpo.log", Path("rel/hpo.log.artifacts")),
        ("postgresql://hpo@127.0.0.1:55432/hpo", SERVER_ARTIFACT_DIR),
        ("mysql://u:secret@db/hpo", SERVER_ARTIFACT_DIR),
        ("memory", None),
        (None, None),
        ("", None),
        ("sqlite:///:memory:", None),
        ("sqlite://", None),
    ],
)
def test_artifact_dir_for(url: str | None, expected: Path | None,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ARTIFACT_DIR_ENV, raising=False)
    assert artifact_dir_for(url) == expected


def test_env_overrides_every_persistent_storage(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv(ARTIFACT_DIR_ENV, str(tmp_path / "art"))
    assert artifact_dir_for("postgresql://hpo@h/db") == tmp_path / "art"
    assert artifact_dir_for("sqlite:///x.db") == tmp_path / "art"
    assert artifact_dir_for("memory") is None
    store = artifact_store_for("sqlite:///x.db")
    assert isinstance(store, FileSystemArtifactStore) and (tmp_path / "art").is_dir()


def _trial_outputs(out: Path) -> dict[str, bytes]:
    """The files MetricsWriter leaves in a job's output directory (and some it leaves alone)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.csv").write_text("epoch,val/acc,val/loss\n0,0.81,0.62\n1,0.9,0.31\n")
    Image.new("RGB", (64, 32), "steelblue").save(out / "curves.png")
    (out / "summary.json").write_text(json.dumps({"status": "completed", "epochs": 2}))
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"not uploaded")
    (out / "train.log").write_text("not uploaded\n")
    return {n: (out / n).read_bytes() for n in ("metrics.csv", "curves.png", "summary.json")}


def test_upload_lists_and_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ARTIFACT_DIR_ENV, raising=False)
    (tmp_path / "db").mkdir()
    url = f"sqlite:///{tmp_path / 'db' / 'hpo.db'}"
    study = optuna.create_study(study_name="art", storage=url)
    trial = study.ask(DISTS)
    files = _trial_outputs(tmp_path / "job0")

    ids = upload_trial_artifacts(study, trial._trial_id, tmp_path / "job0", url)
    assert len(ids) == 3
    # a retried call uploads nothing twice, and does not crash
    assert upload_trial_artifacts(study, trial._trial_id, tmp_path / "job0", url) == []
    study.tell(trial, 0.5)
    assert upload_trial_artifacts(study, trial._trial_id, tmp_path / "job0", url) == []

    frozen = study.trials[0]
    metas = get_all_artifact_meta(frozen, storage=study._storage)
    assert sorted(m.filename for m in metas) == sorted(files)
    mimetypes = {m.filename: m.mimetype for m in metas}
    assert mimetypes["curves.png"] == "image/png"
    assert mimetypes["summary.json"] == "application/json"
    store = artifact_store_for(url)
    assert store is not None and (tmp_path / "db" / "hpo.db.artifacts").is_dir()
    for meta in metas:
        target = tmp_path / "download" / meta.filename
        target.parent.mkdir(exist_ok=True)
        download_artifact(artifact_store=store, file_path=str(target),
                          artifact_id=meta.artifact_id)
        assert target.read_bytes() == files[meta.filename]


def test_missing_files_and_memory_storage(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ARTIFACT_DIR_ENV, raising=False)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.create_study(study_name="partial", storage=url)
    trial = study.ask(DISTS)
    out = tmp_path / "job"
    out.mkdir()
    assert upload_trial_artifacts(study, trial._trial_id, out, url) == []  # nothing written
    (out / "metrics.csv").write_text("epoch\n0\n")
    assert len(upload_trial_artifacts(study, trial._trial_id, out, url)) == 1
    _trial_outputs(out)  # the rest appears later (e.g. a resumed trial)
    assert len(upload_trial_artifacts(study, trial._trial_id, out, url)) == 2
    names = [m.filename for m in get_all_artifact_meta(trial)]
    assert sorted(names) == ["curves.png", "metrics.csv", "summary.json"]

    mem = optuna.create_study()
    t = mem.ask(DISTS)
    assert upload_trial_artifacts(mem, t._trial_id, out, None) == []
    assert get_all_artifact_meta(t) == []
