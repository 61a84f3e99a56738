"""Benchmark 2: proposal build time (LLM latency excluded) and prompt size against history size.

A study with N finished trials of 20 parameters (values, 20 intermediate values, a ``curves``
attr as OptunaReporter stores it, ``hpo:source``; 10 % pruned, 5 % failed with ``hpo:error``)
is built in storage; then the real ``LLMSampler`` + agent chain (``build_chain`` with provider
``openai``) ask for one proposal against the loopback ``FakeLLMServer`` (no delay). Build time
= the whole ``study.ask()`` minus the time spent inside the LLM client (SDK + HTTP + parsing):
what the sampler does before and after the call (history read, rendering, checks, provenance).
Tokens: the characters the server received (system + user) / 4 (tiktoken when installed).

Breakdown columns time the pieces directly: the storage read (``study.get_trials``) and the
history rendering (``hpo.agents.chain.prompt_values``). Usage::

    python benchmarks/bench_prompt.py                    # 100, 1000, 10000 trials in memory
    python benchmarks/bench_prompt.py --sqlite           # and on SQLite (up to 1000 trials)
    python benchmarks/bench_prompt.py --quick            # 20 and 200 trials
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    Table,
    base_parser,
    header,
    parse_ints,
    progress,
    setup_logging,
    write_json,
)

N_PARAMS = 20
N_EPOCHS = 20
TARGET_MS = 100.0
TARGET_TOKENS = 8000


def _token_counter() -> tuple[str, Callable[[str], int]]:
    try:
        import tiktoken  # type: ignore[import-not-found]

        enc = tiktoken.get_encoding("cl100k_base")
        return "tiktoken cl100k_base", lambda s: len(enc.encode(s))
    except Exception:
        from hpo.agents.history import estimate_tokens

        return "chars/4", estimate_tokens


def make_space() -> list[Any]:
    """20 parameters: log and linear floats, ints, categoricals, with defaults and descriptions."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hpo.space import ParamSpec

    kinds = [
        ("optimizer.lr", FloatDistribution(1e-5, 1e-1, log=True), 1e-3),
        ("optimizer.weight_decay", FloatDistribution(1e-6, 1e-1, log=True), 1e-4),
        ("optimizer.beta1", FloatDistribution(0.8, 0.99), 0.9),
        ("model.net.dropout", FloatDistribution(0.0, 0.6), 0.1),
        ("model.net.hidden_dim", IntDistribution(16, 1024, log=True), 128),
        ("model.net.depth", IntDistribution(1, 8), 2),
        ("data.batch_size", CategoricalDistribution([16, 32, 64, 128, 256]), 64),
        ("model", CategoricalDistribution(["mlp", "cnn", "resnet9"]), "mlp"),
        ("optimizer", CategoricalDistribution(["adam", "adamw", "sgd"]), "adamw"),
        ("scheduler", CategoricalDistribution(["none", "cosine", "step"]), "none"),
    ]
    specs = [
        ParamSpec(name=n, distribution=d, default=default,
                  description=f"{n.rsplit('.', 1)[-1]}: tune with care")
        for n, d, default in kinds
    ]
    for i in range(N_PARAMS - len(specs)):
        dist: Any
        if i % 3 == 0:
            dist = FloatDistribution(0.0, 1.0)
        elif i % 3 == 1:
            dist = FloatDistribution(1e-4, 1.0, log=True)
        else:
            dist = IntDistribution(0, 64)
        specs.append(ParamSpec(name=f"model.net.extra_{i}", distribution=dist,
                               description=f"an extra knob number {i}"))
    return specs


def make_trials(n: int, specs: list[Any], seed: int = 0) -> list[Any]:
    """``n`` finished FrozenTrials with params, values, intermediate values and curves."""
    import optuna
    from optuna.trial import TrialState

    rng = random.Random(seed)
    dists = {s.name: s.distribution for s in specs}
    out = []
    for _ in range(n):
        params: dict[str, Any] = {}
        for name, d in dists.items():
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                params[name] = rng.choice(d.choices)
            elif isinstance(d, optuna.distributions.IntDistribution):
                params[name] = rng.randint(d.low, d.high)
            elif d.log:
                params[name] = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
            else:
                params[name] = rng.uniform(d.low, d.high)
        roll = rng.random()
        state = (TrialState.FAIL if roll < 0.05 else TrialState.PRUNED if roll < 0.15
                 else TrialState.COMPLETE)
        epochs = N_EPOCHS if state == TrialState.COMPLETE else rng.randint(2, N_EPOCHS // 2)
        top = 0.6 + 0.35 * rng.random()
        acc = [round(top * (1 - math.exp(-(e + 1) / 4)) + rng.gauss(0, 0.01), 6)
               for e in range(epochs)]
        curves = {
            "epoch": list(range(epochs)),
            "train/loss": [round(2.3 * math.exp(-(e + 1) / 5) + 0.05, 6) for e in range(epochs)],
            "val/loss": [round(2.3 * math.exp(-(e + 1) / 6) + 0.1, 6) for e in range(epochs)],
            "val/acc": acc,
            "val/f1": [round(a * 0.97, 6) for a in acc],
            "lr": [params["optimizer.lr"]] * epochs,
        }
        attrs: dict[str, Any] = {"hpo:source": rng.choice(["llm", "llm", "fallback"])}
        if state != TrialState.FAIL:
            attrs["curves"] = curves
        else:
            attrs["hpo:error"] = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
        out.append(optuna.trial.create_trial(
            state=state,
            params=params,
            distributions=dists,
            value=acc[-1] if state == TrialState.COMPLETE else None,
            intermediate_values=(
                {e: v for e, v in enumerate(acc)} if state != TrialState.FAIL else None
            ),
            user_attrs=attrs,
        ))
    return out


def _fast_build_storage(url: str | None) -> Any:
    """The storage to build the history in: SQLite without fsync (the build is not measured)."""
    if url is None:
        return None
    import optuna
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url)

    @event.listens_for(storage.engine, "connect")
    def _no_sync(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        cur.close()

    storage.engine.dispose()  # reconnect with the pragma
    return storage


class TimingClient:
    """Wraps the real LLM client and adds up the wall time spent inside ``complete``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def complete(self, messages: Any, reply_model: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._inner.complete(messages, reply_model, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def build_sampler(chain_name: str, specs: list[Any]) -> tuple[Any, TimingClient]:
    from hpo.agents.chain import RoleSettings
    from hpo.agents.factory import build_chain
    from hpo.samplers import LLMSampler

    chain = build_chain(
        {"provider": "openai", "model": "gpt-4o-mini", "chain": chain_name, "max_retries": 0,
         "timeout_s": 60, "dump_prompts": False},
        sensitive={"digits": "dataset_1", "bench": "study_1"},
    )
    assert chain is not None
    timer = TimingClient(chain.default.client)  # type: ignore[attr-defined]
    chain.default = dataclasses.replace(chain.default, client=timer)  # type: ignore[attr-defined]
    for role, settings in list(chain.roles.items()):  # type: ignore[attr-defined]
        chain.roles[role] = RoleSettings(  # type: ignore[attr-defined]
            client=timer, temperature=settings.temperature, max_tokens=settings.max_tokens)
    sampler = LLMSampler(chain=chain, search_space=specs, batch_size=1, seed=0,
                         objective_names=["val/acc"], dump_dir=None)
    return sampler, timer


def measure(n: int, storage_kind: str, chain_name: str, server: Any, count: Callable[[str], int],
            work: Path, repeats: int, cache: dict[tuple[int, str], Any]) -> dict[str, Any]:
    import optuna

    from hpo.agents.chain import StudyView, prompt_values

    specs = make_space()
    key = (n, storage_kind)
    if key not in cache:
        url = None if storage_kind == "memory" else f"sqlite:///{work / f'p{n}.db'}"
        t0 = time.perf_counter()
        study = optuna.create_study(study_name=f"bench{n}", storage=_fast_build_storage(url),
                                    direction="maximize")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val/acc"])
        study.add_trials(make_trials(n, specs))
        progress(f"  built {n} trials ({storage_kind}) in {time.perf_counter() - t0:.1f} s")
        cache[key] = url if url is not None else study
    stored = cache[key]
    sampler, timer = build_sampler(chain_name, specs)
    if isinstance(stored, str):  # a fresh Study object: its cache starts cold, as on resume
        study = optuna.load_study(study_name=f"bench{n}", storage=stored, sampler=sampler)
    else:
        study = stored
        study.sampler = sampler

    fixed = {s.name: s.distribution for s in specs}
    asks, builds, llm, tokens_max, tokens_sum, reqs = [], [], [], [], [], []
    for _ in range(repeats):
        before = len(server.requests)
        timer.seconds = 0.0
        t0 = time.perf_counter()
        trial = study.ask(fixed)  # as the sweeper asks: with the search space
        total = time.perf_counter() - t0
        sent = server.requests[before:]
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # keep the history at n finished
        asks.append(total)
        llm.append(timer.seconds)
        builds.append(total - timer.seconds)
        sizes = [count(r.system + "\n" + r.messages_text) for r in sent]
        tokens_max.append(max(sizes, default=0))
        tokens_sum.append(sum(sizes))
        reqs.append(len(sent))
        src = trial.user_attrs.get("hpo:source")
        if src not in ("llm", "repaired", "clamped"):
            raise RuntimeError(f"trial {trial.number} came from {src!r}, not the LLM: "
                               f"{trial.user_attrs.get('hpo:fallback_reason')}")

    # breakdown: the storage read and the prompt values (history rendering), warm
    t0 = time.perf_counter()
    trials = study.get_trials(deepcopy=False)
    read_s = time.perf_counter() - t0
    view = StudyView(space=specs, directions=["maximize"], objective_names=["val/acc"],
                     trials=trials, n_proposals=1)
    chain = sampler._chain
    t0 = time.perf_counter()
    prompt_values(view, anonymizer=chain.anonymizer, history=chain.history)
    render_s = time.perf_counter() - t0
    return {
        "first_build_s": builds[0],
        "build_s": statistics.median(builds[1:]) if len(builds) > 1 else builds[0],
        "llm_s": statistics.median(llm),
        "read_s": read_s,
        "render_s": render_s,
        "tokens_max": max(tokens_max),
        "tokens_sum": statistics.median(tokens_sum),
        "requests": statistics.median(reqs),
    }


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=parse_ints, default=None,
                   help="comma-separated history sizes (default 100,1000,10000; --quick: 20,200)")
    p.add_argument("--chains", default="single,diagnose",
                   help="comma-separated chains (single, diagnose, consultants, planner)")
    p.add_argument("--sqlite", action="store_true",
                   help="also measure on SQLite storage (up to --sqlite-max trials)")
    p.add_argument("--sqlite-max", type=int, default=1000,
                   help="largest history built on SQLite (building costs ~60 ms per trial)")
    p.add_argument("--repeats", type=int, default=5, help="asks per configuration")
    args = p.parse_args()
    setup_logging(args.verbose)
    header("Proposal build time and prompt size against stored trials", args)
    sizes = args.trials or ([20, 200] if args.quick else [100, 1000, 10000])
    chains = [c.strip() for c in args.chains.split(",") if c.strip()]
    repeats = 2 if args.quick else max(args.repeats, 2)

    import optuna

    from hpo.testing.fake_llm import FakeLLMServer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hpo").setLevel(logging.INFO if args.verbose else logging.ERROR)
    counter_name, count = _token_counter()
    storages = ["memory", "sqlite"] if args.sqlite else ["memory"]
    table = Table(
        "Proposal build time (LLM call excluded) and prompt size",
        ["storage", "trials", "chain", "requests/ask", "build ms (first)", "build ms",
         "read ms", "render ms", "LLM client ms", "prompt tokens (largest)",
         "tokens/ask"],
    )
    cache: dict[tuple[int, str], Any] = {}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp, FakeLLMServer(seed=0) as server:
        saved = {k: os.environ.get(k) for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
        os.environ["OPENAI_BASE_URL"] = server.openai_base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench-not-a-secret"
        try:
            for chain_name in chains:  # warm-up: one-time imports and schema building
                measure(8, "memory", chain_name, server, count, Path(tmp), 2, {})
            for storage_kind in storages:
                for n in sizes:
                    if storage_kind == "sqlite" and n > args.sqlite_max:
                        continue
                    for chain_name in chains:
                        progress(f"{n} trials, {storage_kind}, chain {chain_name}")
                        r = measure(n, storage_kind, chain_name, server, count, Path(tmp),
                                    repeats, cache)
                        table.add(storage_kind, n, chain_name, r["requests"],
                                  r["first_build_s"] * 1e3, r["build_s"] * 1e3,
                                  r["read_s"] * 1e3, r["render_s"] * 1e3, r["llm_s"] * 1e3,
                                  r["tokens_max"], r["tokens_sum"])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    table.notes += [
        f"{N_PARAMS} parameters, {N_EPOCHS} intermediate values and a curves attr per trial; "
        f"{repeats} asks per row; build ms = median ask minus LLM client time, 'first' = the "
        "first ask of a fresh Study object (cold storage cache on SQLite); a warm-up ask pays "
        "the one-time imports before",
        "read ms: study.get_trials() (warm); render ms: prompt_values() (history, space, "
        "objectives) of one role",
        f"tokens: {counter_name} of system + user text as received by the server; "
        f"targets at 10000 trials: build <= {TARGET_MS:.0f} ms, prompt <= {TARGET_TOKENS} tokens",
    ]
    table.print()
    write_json(args.json, [table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
