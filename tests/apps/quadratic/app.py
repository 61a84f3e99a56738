"""A plain Hydra app (no hpo config) that selects hydra/sweeper=hpo, as any user's app can."""

from __future__ import annotations

import os
import time

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> float:
    if cfg.sleep:
        time.sleep(float(cfg.sleep))
    if cfg.fail_when_x_above is not None and cfg.x > cfg.fail_when_x_above:
        raise RuntimeError(f"x={cfg.x} is too large for this app")
    if cfg.nan:
        return float("nan")
    if cfg.record_env:
        with open(cfg.record_env, "a") as f:
            f.write(f"{os.environ.get('HPO_TRIAL_NUMBER')} {os.getpid()}\n")
    return float((cfg.x - 2.0) ** 2 + (0 if cfg.kind == "a" else 1) + cfg.y)


if __name__ == "__main__":
    main()
