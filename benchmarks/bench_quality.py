"""Benchmark 6: search quality: samplers and hpo's LLM modes on real HPO problems, as regret.

Problems (``benchmarks/quality/problems.py``; nothing is downloaded): two synthetic functions
(``sphere_mixed``, ``branin_mixed``), hpo's own digits task tabulated by
``benchmarks/make_digits_table.py`` (``digits_mlp``, a trial costs a lookup), and scikit-learn
estimators on its bundled data with 3-fold CV (``svc_digits``, ``hgb_cancer``, ``mlp_wine``).

Methods (``benchmarks/quality/methods.py``): ``random``, ``tpe``, ``tpe_seeded`` (TPE with the
default configuration enqueued as trial 0), ``cmaes``, ``gp``, and hpo's LLM modes
(``propose``, ``hybrid``), built by ``hpo.samplers.sampler_from_agent_config`` as the sweeper
builds them, once per agent: ``adversarial`` and ``corners`` (scripted worst-case LLMs behind
``hpo.testing.FakeLLMServer``), ``local`` ($HPO_LOCAL_BASE_URL), hosted presets when their key
is set.

For every (problem, method, seed) one study of max(budgets) trials runs; the tables give the
mean normalized regret at each budget with a 95 % bootstrap CI, LLM calls/tokens/cost per run,
the goal of issue 12 (an LLM mode within 0.01 of TPE at the largest budget), the damage an LLM
does before damage control reacts, and real LLMs against seeded TPE and CMA-ES. Usage::

    python benchmarks/bench_quality.py                    # 10 seeds, budgets 10,15,25,50
    python benchmarks/bench_quality.py --quick            # a few minutes: 3 seeds, budgets 5,10
    python benchmarks/bench_quality.py --agents adversarial,local --methods tpe,propose
    python benchmarks/bench_quality.py --docs             # also write docs/benchmarks.md
    python benchmarks/bench_quality.py --agents local ... --docs --docs-block bench_quality_local
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from _common import (
    REPO_ROOT,
    Table,
    base_parser,
    header,
    machine_info,
    parse_ints,
    progress,
    setup_logging,
    write_json,
)

QUICK = {
    "problems": "sphere_mixed,branin_mixed,digits_mlp",
    "methods": "random,tpe,propose,hybrid",
    "seeds": 3,
    "budgets": [5, 10],
}
FULL = {
    "problems": "sphere_mixed,branin_mixed,digits_mlp,svc_digits,hgb_cancer,mlp_wine",
    "methods": "random,tpe,tpe_seeded,cmaes,gp,propose,hybrid",
    "seeds": 10,
    "budgets": [10, 15, 25, 50],
}
DOC = REPO_ROOT / "docs" / "benchmarks.md"
FIGURES = REPO_ROOT / "docs" / "figures"


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _without_docs_args(argv: list[str]) -> list[str]:
    """The command line without ``--docs`` and ``--docs-block NAME`` (as the docs show it)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--docs-block":
            skip = True
        elif a != "--docs" and not a.startswith("--docs-block="):
            out.append(a)
    return out


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--problems", default=None,
                   help=f"comma-separated (default: all; --quick: {QUICK['problems']})")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated (default {FULL['methods']}; --quick: "
                        f"{QUICK['methods']})")
    p.add_argument("--agents", default="adversarial",
                   help="comma-separated LLMs of the LLM modes: adversarial, corners (scripted "
                        "fake LLMs), local, claude, openai, deepseek, gemini, openrouter "
                        "(default adversarial; an unavailable one is skipped with one line)")
    p.add_argument("--agent", dest="agents_extra", action="append", default=[],
                   help="add one agent (repeatable), e.g. --agent local")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method (default 10)")
    p.add_argument("--budgets", type=parse_ints, default=None,
                   help="comma-separated trial budgets (default 10,15,25,50; --quick: 5,10)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_quality",
                   help="runs (one JSON per study, reused by a rerun) and the figure")
    p.add_argument("--fresh", action="store_true", help="rerun studies already in --out")
    p.add_argument("--docs", action="store_true",
                   help=f"write the tables and figure into {DOC.relative_to(REPO_ROOT)}")
    p.add_argument("--docs-block", default="bench_quality",
                   help="--docs: the marker pair <!-- NAME:begin --> ... <!-- NAME:end --> to "
                        "fill; the figure is docs/figures/NAME.png (default bench_quality)")
    args = p.parse_args()
    setup_logging(args.verbose)
    preset = QUICK if args.quick else FULL
    problems_arg = _names(args.problems or str(preset["problems"]))
    methods_arg = _names(args.methods or str(preset["methods"]))
    agents = list(dict.fromkeys(_names(args.agents) + args.agents_extra))
    seeds = args.seeds or int(preset["seeds"])  # type: ignore[call-overload]
    budgets = sorted(args.budgets or list(preset["budgets"]))  # type: ignore[call-overload]
    if seeds < 1 or args.workers < 1:
        print("--seeds and --workers must be >= 1: use e.g. --seeds 10", file=sys.stderr)
        return 2
    if args.docs:
        from quality.report import check_docs

        try:
            check_docs(DOC, args.docs_block)
        except ValueError as exc:
            print(f"--docs-block {args.docs_block!r}: {exc}", file=sys.stderr)
            return 2

    from quality import methods as registry
    from quality.problems import PROBLEMS

    unknown = [n for n in problems_arg if n not in PROBLEMS]
    if unknown:
        print(f"--problems: {unknown[0]!r} is unknown: use {', '.join(PROBLEMS)}",
              file=sys.stderr)
        return 2
    try:
        methods, skipped = registry.resolve(methods_arg, agents)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2

    header("Search quality", args)
    for line in skipped:
        print(f"- {line}", flush=True)
    if not methods:
        print("nothing to run: every method asked for was skipped (see above)", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    progress(f"building {len(problems_arg)} problem(s)")
    try:
        problems = {name: PROBLEMS[name]() for name in problems_arg}
    except (FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2

    from quality.report import (
        curves,
        damage_table,
        goal_table,
        llm_table,
        plot,
        ranges_table,
        regret_table,
        regret_wide_table,
        versus_table,
        write_docs,
    )
    from quality.runner import Job, run_all

    n_trials = budgets[-1]
    # seed by seed (an interrupted run leaves whole seeds: rerun with fewer --seeds to report
    # them), the expensive problems first, methods interleaved, so all processes stay busy
    jobs = [Job(pn, m.name, s, n_trials) for s in range(seeds) for pn in reversed(problems_arg)
            for m in methods]
    runs, ran = run_all(jobs, args.out, workers=args.workers, fresh=args.fresh,
                        progress=progress)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()

    all_curves, ranges = curves(problems, {m.name: m.llm for m in methods}, runs)
    ranges_t = ranges_table(problems, ranges)
    goal_t = goal_table(all_curves, n_trials)
    damage_t = damage_table(all_curves, budgets)
    llm_t = llm_table(all_curves)
    # issue 12, goal 6: real LLMs against seeded TPE and CMA-ES at 15 and 50 trials
    versus_t = versus_table(all_curves, [b for b in budgets if b in (15, 50)] or budgets,
                            scripted=list(registry.SCRIPTED))
    tables: list[Table] = [ranges_t, regret_table(all_curves, budgets), llm_t, goal_t,
                           damage_t, versus_t]
    for t in tables:
        t.print()
    # the docs show the regret table wide (one row per problem and method), and only the
    # tables with rows
    docs_tables = [t for t in (ranges_t, regret_wide_table(all_curves, budgets), goal_t,
                               damage_t, versus_t, llm_t) if t.rows]
    figure = args.out / f"{args.docs_block}.png"
    title = (f"{seeds} seeds; mean normalized regret, 95 % bootstrap band; dashed: LLM modes "
             f"({', '.join(a for a in agents if not any(a in s for s in skipped))})")
    plot(all_curves, budgets, figure, title)
    study_min = sum(r.wall_s for r in runs.values()) / 60
    done = (f"{ran} studies run now in {args.workers} processes, {len(jobs) - ran} reused; "
            f"the {len(jobs)} studies took {study_min:.0f} min of wall time summed")
    footer = (f"- runtime: {wall / 60:.1f} min ({done}); load average {load0[0]:.1f} at the "
              f"start, {load1[0]:.1f} at the end\n- figure: {figure}")
    print(footer, flush=True)
    write_json(args.json, tables)
    if args.docs:
        doc_figure = FIGURES / f"{args.docs_block}.png"
        plot(all_curves, budgets, doc_figure, title)
        argv = " ".join(_without_docs_args(sys.argv[1:]))
        block = "\n".join([
            f"Command: `python benchmarks/bench_quality.py {argv}`",
            "",
            f"Machine: {machine_info().split('; load avg')[0]}; load average "
            f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end; {wall / 60:.1f} min "
            f"({done}); {time.strftime('%Y-%m-%d %H:%M')}.",
            *[f"- {line}" for line in skipped],
            "",
            f"![convergence](figures/{doc_figure.name})",
            "",
            *[t.render().replace("### ", "#### ", 1) + "\n" for t in docs_tables],
        ])
        write_docs(DOC, block, args.docs_block)
        progress(f"wrote {DOC} and {doc_figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
