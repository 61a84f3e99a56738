"""The core packages know nothing of Hydra (issue 17 item 1).

``hpo.errors`` is a plain exception hierarchy; only the Hydra entry points (``hpo.train.main``,
the ``hpo`` sweeper's facade) turn an ``HPOError`` into Hydra's one-line form. Each check runs
in a fresh interpreter, so nothing this test process imported can hide an import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import {modules}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf"))))
"""


def _loaded_hydra_modules(modules: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(modules=modules)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("modules", [
    "hpo.llm, hpo.agents, hpo.samplers",
    "hpo.errors",
    # the public names the sweeper uses: importing them must not pull Hydra in either
    "hpo.agents.factory, hpo.samplers._factory, hpo.llm.providers",
])
def test_core_packages_load_no_hydra_or_omegaconf(modules: str) -> None:
    assert _loaded_hydra_modules(modules) == []


def test_the_probe_sees_hydra_where_it_is_imported() -> None:
    # the check above could not pass by never seeing Hydra at all
    assert "hydra" in _loaded_hydra_modules("hpo.hydra_errors")


def test_hpo_errors_are_plain_exceptions() -> None:
    from hpo.errors import ConfigError, HPOError

    assert [c.__name__ for c in HPOError.__mro__] == ["HPOError", "Exception",
                                                      "BaseException", "object"]
    assert issubclass(ConfigError, HPOError)
