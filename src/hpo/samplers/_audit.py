"""The audit copy of one LLM call: the exact request and reply, secrets redacted.

One JSON file per LLM request (``call-0007-proposer.json``), written by the sampler under the
sweep's ``llm/`` folder. It is an audit copy, never state: nothing reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpo.secrets import redact, redact_obj

__all__ = ["call_dump", "write_call_dump"]


def call_dump(number: int, record: Any, *, study: str, trial: int | str) -> dict[str, Any]:
    """The audit document of one chain call record.

    Args:
        number: The study-wide number of the LLM request (``call-0007``).
        record: The chain's call record (:class:`hpo.agents.chain.CallRecord`).
        study: The study's name.
        trial: The trial that received the batch's first proposal, or ``"prefetched"`` when the
            call was made before its trials existed.

    The exact request body (messages, ``response_format`` or tools, schema) is the record's
    ``request`` as the client sent it; records of clients that do not report it carry the
    system prompt and messages instead.
    """
    request = _jsonable(getattr(record, "request", None)) or None
    answered = getattr(record, "model", None)
    doc: dict[str, Any] = {
        "call": f"call-{number:04d}",
        "study": study,
        "trial": trial,
        "role": getattr(record, "role", None),
        "provider": getattr(record, "provider", None),
        "requested_model": getattr(record, "requested_model", None) or answered,
        "answered_model": answered,
        "structured_output": getattr(record, "structured_output", None) or None,
        "cached": getattr(record, "cached", None),
        "error": getattr(record, "error", None),
        "latency_s": getattr(record, "latency_s", None),
        "usage": _jsonable(getattr(record, "usage", None)),
        "request": request,
    }
    if request is None:
        doc["system"] = getattr(record, "system", None)
        doc["messages"] = _jsonable(getattr(record, "messages", None))
    doc["raw_text"] = getattr(record, "raw_text", None)
    return doc


def write_call_dump(
    dump_dir: Path, number: int, record: Any, *, study: str, trial: int | str
) -> Path:
    """Write :func:`call_dump` as ``<dump_dir>/call-NNNN-<role>.json``, secrets redacted.

    Raises:
        OSError: The folder or the file cannot be written.
    """
    role = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(getattr(record, "role", "call"))) or "call"
    doc = call_dump(number, record, study=study, trial=trial)
    text = redact(json.dumps(redact_obj(doc), indent=2, ensure_ascii=False, default=str))
    dump_dir.mkdir(parents=True, exist_ok=True)
    path = dump_dir / f"call-{number:04d}-{role}.json"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _jsonable(obj: Any) -> Any:
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "model_dump"):
        return _jsonable(obj.model_dump())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return str(obj)
