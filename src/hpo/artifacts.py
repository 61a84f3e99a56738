"""Trial artifacts in an Optuna artifact store beside the study's storage.

The files a trial writes (``metrics.csv``, ``curves.png``, ``summary.json`` from
:class:`hpo.callbacks.MetricsWriter`) are uploaded with :func:`optuna.artifacts.upload_artifact`
so that optuna-dashboard shows them on the trial's page (``python -m hpo.dashboard`` opens the
same store). They are copies: the storage stays the single source of truth.

Where the store lives, from the storage URL:

- ``sqlite:///dir/hpo.db`` → ``dir/hpo.db.artifacts/``
- ``journal:///dir/hpo.log`` → ``dir/hpo.log.artifacts/``
- any server URL (``postgresql://...``, ``mysql://...``) → ``outputs/artifacts/`` (relative to
  the working directory)
- ``memory`` / ``None`` → no store (nothing is uploaded)

``HPO_ARTIFACT_DIR`` overrides the place for every persistent storage; set the same value for
the sweep and the dashboard.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.exceptions import UpdateFinishedTrialError

from hpo.storage import JOURNAL_PREFIX

__all__ = ["ARTIFACT_DIR_ENV", "TRIAL_ARTIFACT_FILES", "artifact_dir_for", "artifact_store_for",
           "upload_trial_artifacts"]

log = logging.getLogger(__name__)

ARTIFACT_DIR_ENV = "HPO_ARTIFACT_DIR"
# Files of a trial's output directory that become artifacts, in upload order.
TRIAL_ARTIFACT_FILES: tuple[str, ...] = ("metrics.csv", "curves.png", "summary.json")
SERVER_ARTIFACT_DIR = Path("outputs") / "artifacts"
_MEMORY_URLS = ("", "memory", "inmemory", "in-memory")


def artifact_dir_for(storage_url: str | None) -> Path | None:
    """The directory of the artifact store that belongs to ``storage_url`` (None: no store).

    Args:
        storage_url: A storage URL as accepted by :func:`hpo.storage.open_storage`.

    Returns:
        The directory (not created); None for in-memory storages.
    """
    if storage_url is None or storage_url.strip() in _MEMORY_URLS:
        return None
    if storage_url.startswith("sqlite:") and _sqlite_path(storage_url) in ("", ":memory:"):
        return None
    override = os.environ.get(ARTIFACT_DIR_ENV)
    if override:
        return Path(override).expanduser()
    if storage_url.startswith("sqlite:"):
        return Path(_sqlite_path(storage_url) + ".artifacts")
    if storage_url.startswith(JOURNAL_PREFIX):
        return Path(storage_url[len(JOURNAL_PREFIX):] + ".artifacts")
    return SERVER_ARTIFACT_DIR


def artifact_store_for(storage_url: str | None) -> FileSystemArtifactStore | None:
    """A file-system artifact store beside the storage at ``storage_url``; None for memory.

    The directory is created when missing. See the module docstring for the places.

    Args:
        storage_url: A storage URL as accepted by :func:`hpo.storage.open_storage`.

    Returns:
        The store, or None when the storage keeps nothing (in-memory).
    """
    path = artifact_dir_for(storage_url)
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(base_path=path)


def upload_trial_artifacts(
    study: optuna.Study,
    trial_id: int,
    output_dir: Path,
    storage_url: str | None,
    *,
    files: Sequence[str] = TRIAL_ARTIFACT_FILES,
) -> list[str]:
    """Upload a trial's ``metrics.csv``, ``curves.png`` and ``summary.json`` as artifacts.

    Files that are missing are skipped, and so are files whose name the trial already holds as
    an artifact (a retried call uploads nothing twice). Optuna attaches artifacts to running
    trials only: call this before ``study.tell``; for a finished trial it logs and returns.

    Args:
        study: The study of the trial.
        trial_id: The trial's storage id (``trial._trial_id``), not its number.
        output_dir: The trial job's output directory.
        storage_url: The storage URL of ``study`` (chooses the artifact store).
        files: Names of the files to upload, relative to ``output_dir``.

    Returns:
        The ids of the artifacts uploaded by this call.
    """
    paths = [Path(output_dir) / name for name in files]
    paths = [p for p in paths if p.is_file()]
    if not paths:  # nothing to upload: no storage round trip (apps that write no such file)
        return []
    store = artifact_store_for(storage_url)
    if store is None:
        log.debug("in-memory storage: the artifacts of trial id %d are not uploaded", trial_id)
        return []
    storage = study._storage
    frozen = storage.get_trial(trial_id)
    if frozen.state.is_finished():
        log.info("trial %d is already %s: its artifacts are not uploaded (upload before tell)",
                 frozen.number, frozen.state.name)
        return []
    present = {meta.filename for meta in get_all_artifact_meta(frozen, storage=storage)}
    uploaded: list[str] = []
    for path in paths:
        if path.name in present:
            log.debug("trial %d already holds artifact %s", frozen.number, path.name)
            continue
        try:
            artifact_id = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=frozen, storage=storage
            )
        except UpdateFinishedTrialError:
            log.info("trial %d finished while its artifacts were uploaded: %s and later skipped",
                     frozen.number, path.name)
            break
        uploaded.append(artifact_id)
        log.debug("trial %d: uploaded %s as artifact %s", frozen.number, path.name, artifact_id)
    return uploaded


def _sqlite_path(url: str) -> str:
    """The database path of a ``sqlite:///path`` URL, without any ``?query``."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    if rest.startswith("/"):
        rest = rest[1:]  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
    return rest.split("?", 1)[0]
