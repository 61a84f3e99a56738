"""Redaction at the logging layer: no log record of the process carries a secret.

:func:`install_log_redaction` wraps the process's log-record factory once (``import hpo``
calls it). Every record any logger creates, hpo's, the SDKs' (``openai``, ``anthropic``),
``httpx``'s, Hydra's, Lightning's or any other, passes through it before a filter or a
handler sees it: the message is formatted (``msg % args``) and redacted by
:func:`hpo.secrets.redact` (configured secret values and secret-shaped text), and so are the
traceback and the stack of the record. Each of them is also capped at
:data:`LOG_TEXT_MAX_CHARS` characters, ending in ``… [truncated: N characters in all]``: a log
line quoting an LLM reply (a proposal's bad value of megabytes) costs no more than a short one
to redact, and does not flood stdout, which is a file on SLURM.

Why a record factory and not a filter: a ``logging.Filter`` on a logger does not see the records
of its child loggers, and one on handlers is lost whenever handlers are replaced, which Hydra
does at every job (``logging.config.dictConfig`` of ``hydra.job_logging``) and any library may
do. The factory is one process-wide hook that ``dictConfig`` leaves alone, covers records whose
logger or handler did not exist when it was installed, and needs no re-installing.

What it does not see: text written to stdout/stderr without logging (``print``, Hydra's report of
an exception that ends the run, rich progress) and custom attributes passed with ``extra=``.
"""

from __future__ import annotations

import logging
from typing import Any

from hpo.secrets import TRUNCATED, redact_head

__all__ = ["LOG_TEXT_MAX_CHARS", "install_log_redaction", "redact_record"]

#: Characters kept of a record's message, traceback and stack, each.
LOG_TEXT_MAX_CHARS = 20_000

_MARK = "_hpo_redacting"


def install_log_redaction() -> None:
    """Wrap the log-record factory so every record is redacted; idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, _MARK, False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    setattr(factory, _MARK, True)
    logging.setLogRecordFactory(factory)


def redact_record(record: logging.LogRecord) -> None:
    """Redact ``record`` in place: its message (args merged in), traceback and stack.

    Afterwards ``record.msg`` is the redacted message and ``record.args`` is empty, so neither a
    formatter nor a handler reading the args sees the raw values; an exception becomes its
    redacted traceback text in ``record.exc_text`` (``exc_info`` is cleared, so no handler
    renders the raw exception, e.g. its message, on its own).
    """
    try:
        message = record.getMessage()
    except Exception as exc:  # a bad format string: logging would report the raw args
        message = f"{record.msg!s} (unformattable log arguments: {type(exc).__name__})"
    record.msg = _clean(message)
    record.args = ()
    if record.exc_info and record.exc_info[0] is not None:
        if not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
    if record.exc_text:
        record.exc_text = _clean(record.exc_text)
    if record.stack_info:
        record.stack_info = _clean(record.stack_info)


def _clean(text: str) -> str:
    """``text`` redacted, and capped at :data:`LOG_TEXT_MAX_CHARS` with the truncation mark."""
    head = redact_head(text, LOG_TEXT_MAX_CHARS)
    if len(text) <= LOG_TEXT_MAX_CHARS:
        return head
    return head[:LOG_TEXT_MAX_CHARS].rstrip() + TRUNCATED.format(n=len(text))
