"""Prompt templates of the agent roles, as Markdown files rendered with :class:`string.Template`.

Each role has ``<role>.system.md`` and ``<role>.user.md``; ``_data_rules.md`` is shared and
substituted as ``$data_rules``. A user may point :class:`PromptSet` at a directory of their own
files; any file missing there falls back to the packaged one.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["ROLES", "PromptSet"]

ROLES: tuple[str, ...] = (
    "analyst",
    "proposer",
    "consultant",
    "supervisor",
    "planner",
    "researcher",
    "repair",
)


class PromptSet:
    """Loads and renders the role templates.

    Args:
        directory: Optional directory with replacement ``<role>.{system,user}.md`` files.
    """

    def __init__(self, *, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None and not self.directory.is_dir():
            raise ValueError(
                f"prompts directory {str(self.directory)!r} does not exist: create it or leave "
                "prompts_dir unset to use the packaged templates"
            )
        self._cache: dict[str, str] = {}

    def text(self, name: str) -> str:
        """The raw text of template file ``name`` (e.g. ``"proposer.user.md"``)."""
        if name not in self._cache:
            if self.directory is not None and (self.directory / name).is_file():
                self._cache[name] = (self.directory / name).read_text(encoding="utf-8")
            else:
                res = resources.files(__package__).joinpath(name)
                if not res.is_file():
                    raise ValueError(f"prompt template {name!r} does not exist: use one of "
                                     f"{', '.join(ROLES)} with .system.md / .user.md")
                self._cache[name] = res.read_text(encoding="utf-8")
        return self._cache[name]

    def render(self, role: str, values: Mapping[str, Any]) -> tuple[str, str]:
        """``(system, user)`` for ``role`` with ``values`` substituted.

        Raises:
            ValueError: Unknown role, or a template names a value that was not given.
        """
        if role not in ROLES:
            raise ValueError(f"role {role!r} is unknown: use one of {', '.join(ROLES)}")
        vals = {"data_rules": self.text("_data_rules.md").strip(), **values}
        out: list[str] = []
        for part in ("system", "user"):
            name = f"{role}.{part}.md"
            try:
                out.append(string.Template(self.text(name)).substitute(vals).strip())
            except KeyError as exc:
                raise ValueError(
                    f"prompt template {name!r} needs ${exc.args[0]}, which the chain does not "
                    "provide: remove it from the template"
                ) from None
        return out[0], out[1]
