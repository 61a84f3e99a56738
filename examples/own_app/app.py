"""Your own Hydra app, swept by hpo with the LLM: nothing of hpo is imported here.

The function stands in for a training run: it takes its hyperparameters from the config and
returns a validation loss. ``conf/config.yaml`` picks hpo's sweeper and hpo's ``agent`` group
(through the search path ``pkg://hpo.conf``); see docs/your-project.md.

    python app.py                      # one run with the defaults
    python app.py -m                   # a sweep: the LLM proposes (TPE when no API key is set)
"""

from __future__ import annotations

import math

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    # a smooth bowl around lr=3e-3, width=96, with a penalty for the wrong activation
    loss = (math.log10(cfg.lr) - math.log10(3e-3)) ** 2 + ((cfg.width - 96) / 128) ** 2
    loss += 0.0 if cfg.activation == "gelu" else 0.1
    return round(0.05 + loss, 6)


if __name__ == "__main__":
    main()
