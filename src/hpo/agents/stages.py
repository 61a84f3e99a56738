"""Chains as lists of stages: the stage names, the named presets, and the check of a list.

A chain is a list of stages run in order (``agent.chain``), e.g. ``[analyst, proposer, checker]``:

- ``researcher``: remedies for the current diagnosis (web search where the client has it);
- ``analyst``: an LLM reading of the history (skipped when the rules are conclusive);
- ``consultants``: two consultants discuss for ``agent.consultant_turns`` turns;
- ``proposer``, ``supervisor`` (decides after the consultants), ``planner`` (also picks a step
  size, or stops): the proposing stages, exactly one, last;
- ``checker``: the sampler's deterministic check, always applied; accepted as the last stage.

Pure: no LLM, no config objects. :func:`chain_stages` raises ``ValueError`` with one line naming
the bad value and the fix; the factory turns it into a ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["ADVISING_STAGES", "PRESETS", "PROPOSING_STAGES", "STAGES", "chain_stages"]

PROPOSING_STAGES: tuple[str, ...] = ("proposer", "supervisor", "planner")
ADVISING_STAGES: tuple[str, ...] = ("researcher", "analyst", "consultants")
STAGES: tuple[str, ...] = (*ADVISING_STAGES, *PROPOSING_STAGES, "checker")

PRESETS: dict[str, tuple[str, ...]] = {
    "single": ("proposer", "checker"),
    "diagnose": ("analyst", "proposer", "checker"),
    "consultants": ("consultants", "supervisor", "checker"),
    "planner": ("planner", "checker"),
}

_EXAMPLE = "[analyst, planner, checker]"


def _show(stages: Sequence[str]) -> str:
    return "[" + ", ".join(stages) + "]"


def _with_researcher(stages: tuple[str, ...]) -> tuple[str, ...]:
    """``stages`` with a researcher after the analyst (else first), unless it has one."""
    if "researcher" in stages:
        return stages
    at = stages.index("analyst") + 1 if "analyst" in stages else 0
    return (*stages[:at], "researcher", *stages[at:])


def chain_stages(chain: Any, *, researcher: bool = False) -> tuple[str, tuple[str, ...]]:
    """The name and the stages of ``chain`` (a preset name or a list of stage names).

    The stages end with ``checker`` (added when missing). ``researcher=True`` inserts a
    researcher after the analyst, or first when there is none (``agent.researcher``).

    Args:
        chain: ``"diagnose"`` or e.g. ``["analyst", "consultants", "supervisor", "checker"]``;
            None means ``"diagnose"``.
        researcher: Insert the researcher stage.

    Returns:
        ``(name, stages)``: the preset's name, or the stages joined by ``+`` for a list that is
        no preset.

    Raises:
        ValueError: An unknown preset or stage, a repeated stage, no proposing stage or more than
            one, a stage after the proposing one, supervisor without consultants or the reverse.
    """
    presets = ", ".join(PRESETS)
    if chain is None:
        chain = "diagnose"
    if isinstance(chain, str):
        key = chain.strip().lower()
        if key not in PRESETS:
            raise ValueError(
                f"agent.chain={chain!r} is unknown: use one of {presets}, or a list of stages "
                f"such as {_EXAMPLE}"
            )
        stages = PRESETS[key]
        return key, _with_researcher(stages) if researcher else stages
    if not isinstance(chain, Sequence) or not all(isinstance(s, str) for s in chain):
        raise ValueError(
            f"agent.chain={chain!r} is neither a preset nor a list of stage names: use one of "
            f"{presets}, or a list such as {_EXAMPLE}"
        )
    given = [s.strip().lower() for s in chain]
    if not given:
        raise ValueError(f"agent.chain=[] has no stage: use e.g. {_EXAMPLE}")
    for s in given:
        if s not in STAGES:
            raise ValueError(
                f"agent.chain stage {s!r} is unknown: use stages from {', '.join(STAGES)}"
            )
        if given.count(s) > 1:
            raise ValueError(f"agent.chain={_show(given)} lists {s!r} twice: keep one")
    if "checker" in given and given[-1] != "checker":
        raise ValueError(
            f"agent.chain={_show(given)}: checker must be the last stage: move it to the end"
        )
    body = [s for s in given if s != "checker"]
    proposing = [s for s in body if s in PROPOSING_STAGES]
    if not proposing:
        raise ValueError(
            f"agent.chain={_show(given)} has no proposing stage: end it with one of "
            f"{', '.join(PROPOSING_STAGES)} (then checker)"
        )
    if len(proposing) > 1:
        raise ValueError(
            f"agent.chain={_show(given)} has {len(proposing)} proposing stages "
            f"({', '.join(proposing)}): keep one of them, last before checker"
        )
    if body[-1] != proposing[0]:
        raise ValueError(
            f"agent.chain={_show(given)}: the proposing stage {proposing[0]!r} must come last "
            f"(before checker): move {body[-1]!r} before it"
        )
    if proposing[0] == "supervisor" and "consultants" not in body:
        raise ValueError(
            f"agent.chain={_show(given)}: supervisor decides between consultants: put "
            "consultants before it, or use proposer"
        )
    if "consultants" in body and proposing[0] != "supervisor":
        raise ValueError(
            f"agent.chain={_show(given)}: consultants need a supervisor to decide: end the "
            "chain with supervisor"
        )
    stages = (*body, "checker")
    name = next((n for n, p in PRESETS.items() if p == stages), "+".join(body))
    return name, _with_researcher(stages) if researcher else stages
