"""ConfigStore entry ``hydra/sweeper=hpo``. Light: imported at every Hydra start.

No ``from __future__ import annotations`` here: Hydra's plugin scanner runs this module outside
``sys.modules`` and OmegaConf reads the real annotation types of the dataclass.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class HPOSweeperConf:
    _target_: str = "hydra_plugins.hpo_sweeper.hpo_sweeper.HPOSweeper"

    # hydra/sweeper/sampler=llm|tpe|random|cmaes|gp|grid|nsgaii|qmc selects a sampler config
    # (as hydra-optuna-sweeper's groups do); none selected: the `sampler` option below.
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"sampler": None}])

    # Optuna storage URL: sqlite:///path.db, postgresql://user@host/db, journal:///path.log,
    # or memory. Relative sqlite/journal paths are resolved against the launch directory.
    # Keep passwords out of it: use PGPASSWORD/.pgpass, or ${oc.env:HPO_STORAGE_URL}.
    storage: Optional[str] = "sqlite:///outputs/hpo.db"

    # Study name; rerunning with the same name resumes the study. Unset (null): the config
    # name plus a short hash of the search space (e.g. train-3f9a1c, shown at start), so that
    # sweeps over different spaces never clash and the same command resumes its own study.
    study_name: Optional[str] = None

    # Total budget of the study: finished trials (complete + pruned + failed) the study should
    # hold. Rerunning an interrupted sweep finishes the rest; raising it extends the study.
    n_trials: int = 20

    # Parallel slots: trials in flight at once. A slot is refilled as soon as its trial ends.
    n_jobs: int = 1

    # "minimize" | "maximize", or a list of them for multi-objective studies. The task returns
    # one value per direction (hpo.train: the metrics named by `objective`).
    direction: Any = "minimize"

    # The search space: {param path: override grammar}, e.g.
    # {optimizer.lr: "tag(log, interval(1e-5, 1e-1))", model: "choice(mlp, cnn)"}.
    params: Optional[Dict[str, str]] = None

    # One line per parameter for the agents: {param path: what it does, when to change it}.
    descriptions: Dict[str, str] = field(default_factory=dict)

    # Conditional parameters: {param: "other=value[,value]"}: sampled (and shown to the agents)
    # only when the searched parameter `other` took one of those values, e.g.
    # {model.net.hidden_dim: "model=mlp"}.
    conditions: Dict[str, str] = field(default_factory=dict)

    # Stop the sweep when failed / finished trials of this run exceeds this rate
    # (judged once 3 trials have finished).
    max_failure_rate: float = 0.5

    # Seed of the samplers (LLM fallback, TPE) and of the baseline order.
    seed: Optional[int] = None

    # Sampler (Hydra instantiates these configs before the sweeper sees them).
    # null (or hydra/sweeper/sampler=llm) = LLMSampler when the app config has an `agent`
    # node (hpo.train does), else the fallback sampler; or a config with a _target_, e.g.
    # {_target_: optuna.samplers.TPESampler}, or a group option (hydra/sweeper/sampler=tpe).
    sampler: Any = None

    # The classical sampler the LLMSampler falls back to (and shares trials with).
    fallback_sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": "${..seed}"}
    )

    # Pruner: none | median | successive_halving | hyperband, or a _target_ config.
    pruner: Any = "none"

    # Seconds between trial heartbeats in storage (RDB/journal storages); 0 disables. A trial
    # whose heartbeat is older than heartbeat_grace_s is failed and retried.
    heartbeat_interval_s: int = 30
    heartbeat_grace_s: int = 120

    # How often a trial whose job died (killed, node lost, orphaned) is retried.
    max_retries: int = 1

    # Print the planned trials (and the sbatch script on SLURM); submit and store nothing.
    dry_run: bool = False

    # Live progress on a TTY (rich); plain log lines otherwise.
    progress: bool = True

    # hydra/launcher=basic: compose each trial's config from a cached composition per set of
    # config-group choices instead of from scratch (same result, ~10x less work per trial);
    # false = Hydra's own composition for every trial.
    fast_inprocess: bool = True

    # Launcher settings per trial (submitit launchers): {"param=value[,value]": {launcher key:
    # value}}, e.g. {"model=resnet9": {gpus_per_node: 1, mem_gb: 32, timeout_min: 240}}. The
    # first class whose condition holds for a trial's params is merged into hydra.launcher
    # for that trial's job; a trial no class matches gets hydra.launcher as it is.
    resources: Any = None

    # On SIGINT/SIGTERM, what happens to jobs in flight on submitit launchers: keep (they run
    # on; rerunning the same command re-attaches to them) or cancel (scancel / stop them; their
    # trials are failed and queued again). In-process trials are always failed and queued again;
    # an interruption never uses up a retry.
    on_interrupt: str = "keep"

    # submitit_slurm: trials ready at the same time (same resources) go out as one job array.
    array: bool = False

    # submitit_slurm: do not run the sweep here; submit this very command as a small SLURM job
    # (sbatch --requeue) that runs the driver, print its job id and log, and return.
    detach: bool = False

    # sbatch options of that driver job, e.g. {time: "3-00:00:00", partition: cpu, mem: 4G}.
    driver_sbatch: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="hpo", node=HPOSweeperConf, provider="hpo"
)

# hydra/sweeper/sampler=<name>: Optuna's samplers by their hydra-optuna-sweeper names, seeded
# by hydra.sweeper.seed. `grid` is partial: the sweeper builds its grid from the searched
# params when no search_space is given. `llm` is the default behaviour, named.
_SEED = "${hydra.sweeper.seed}"
SAMPLER_GROUP: Dict[str, Dict[str, Any]] = {
    "llm": {"llm": True},
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": _SEED},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": _SEED},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": _SEED},
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": _SEED},
    "grid": {"_target_": "optuna.samplers.GridSampler", "_partial_": True, "seed": _SEED},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": _SEED},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": _SEED},
}
for _name, _node in SAMPLER_GROUP.items():
    ConfigStore.instance().store(group="hydra/sweeper/sampler", name=_name, node=_node,
                                 provider="hpo")
