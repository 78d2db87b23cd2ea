"""`drfm bench`."""
from __future__ import annotations

import os
import time
from pathlib import Path


from ._common import UsageError, common, data_home_arg


def register(add) -> None:
    """The `drfm bench` parser (``add(name, **kw)`` makes a subparser)."""
    sp = add("bench", help="run a benchmark suite (each case in its own process); JSON lines out")
    sp.add_argument("suite", nargs="?", help="suite name: a file benchmarks/SUITE.py (rfm, solvers, compare)")
    sp.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                    help="instead of running: print new/old ratios of two results files (matched runs)")
    sp.add_argument("--out", help="JSON-lines output file (default bench-results/SUITE-TIMESTAMP.jsonl)")
    sp.add_argument("--n", type=int, nargs="+", help="training sizes to run instead of the suite's defaults")
    sp.add_argument("--quick", action="store_true", help="tiny sizes, to check the suite runs")
    sp.add_argument("--only", nargs="+", metavar="TEXT",
                    help="run only the cases whose kind/model/dataset/variant contain every TEXT "
                         "(e.g. --only RFMRegressor)")
    sp.add_argument("--timeout", type=float, default=3600, help="seconds allowed per case (default 3600)")
    sp.add_argument("--suite-dir", help="directory holding the suites (default: the checkout's benchmarks/)")
    data_home_arg(sp)
    common(sp)
    sp.set_defaults(func=cmd_bench, show=show_bench)


def cmd_bench(args) -> list[dict]:
    from tqdm.auto import tqdm

    from ..studies import bench

    if args.compare:
        if args.suite:
            raise UsageError("give either a SUITE to run or --compare OLD NEW, not both")
        rows = bench.compare_results(bench.read_results(args.compare[0]), bench.read_results(args.compare[1]))
        if not rows:
            raise UsageError("the two results files have no run in common (matched on suite, kind, model, dataset, "
                             "n, d, device)")
        return rows
    if not args.suite:
        raise UsageError("name a SUITE to run (see --help), or use --compare OLD.jsonl NEW.jsonl")
    sdir = bench.find_suite_dir(args.suite_dir)
    suites = bench.suite_names(sdir)
    if args.suite not in suites:
        raise UsageError(f"unknown benchmark suite {args.suite!r}; available: {', '.join(suites)}")
    suite_file = sdir / f"{args.suite}.py"
    todo = bench.select_cases(suite_file, quick=args.quick, sizes=args.n, device=args.device, only=args.only)
    out_path = Path(args.out) if args.out else Path("bench-results") / f"{args.suite}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    if args.data_home:  # the cases run in their own processes: they find the data through the environment
        os.environ["DRFM_DATA"] = str(Path(args.data_home).expanduser())
    if args.threads is not None:  # ... and their thread count (torch reads it at start)
        from .._threads import resolve_threads

        os.environ["OMP_NUM_THREADS"] = str(resolve_threads(args.threads, "drfm bench"))
    # one bar over the cases: done / total, elapsed and what remains
    progress = lambda cases: tqdm(cases, desc=f"bench {args.suite}", disable=not args.verbose, unit="case")  # noqa: E731
    results = bench.run_suite(suite_file, todo, out_path, timeout=args.timeout, progress=progress)
    for rec in results:
        rec.setdefault("results_file", str(out_path))
    skipped = [r for r in results if "skipped" in r]
    if results and len(skipped) == len(results):
        reasons = sorted({str(r["skipped"]) for r in skipped})
        raise UsageError(f"every selected case ({len(results)}) was skipped, results in {out_path}; "
                         + ("because: " if len(reasons) == 1 else "because of each of:\n") + "\n".join(reasons))
    return results

def show_bench(res: list[dict]) -> str:
    rows = []
    if res and "ratios" in res[0]:
        rows.append("new / old (time and memory: < 1 is better; score: > 1 is better)")
        for r in res:
            name = " ".join(str(r[k]) for k in ("kind", "model", "variant", "dataset") if r.get(k))
            ratios = "  ".join(f"{f} {v:.3f}" for f, v in r["ratios"].items())
            rows.append(f"{name:<40} n={r.get('n', '')}: {ratios}")
        return "\n".join(rows)
    for r in res:
        if "error" in r:
            rows.append(f"{r.get('kind', '?'):<12} {r.get('model', ''):<20} n={r.get('n', '')}: ERROR {r['error']}")
        elif "skipped" in r:
            why = str(r["skipped"]).splitlines()[0] + (" ..." if "\n" in str(r["skipped"]) else "")
            rows.append(f"{r.get('kind', '?'):<12} {r.get('model', ''):<20} n={r.get('n', '')}: skipped ({why})")
        elif r.get("kind") == "kernel_build":
            rows.append(
                f"{'kernel_build':<12} {'n=%d d=%d' % (r['n'], r['d']):<20} kernel {r['kernel_seconds']:.3f} s, "
                f"GEMM+exp {r['gemm_plus_exp_seconds']:.3f} s, ratio {r['ratio']:.2f} ({r['device']})"
            )
        elif r.get("kind") == "centre_step":
            rows.append(
                f"{'centre_step':<12} {'n=%d m=%d' % (r['n'], r['params']['m']):<20} step {r['step_seconds']:.3f} s, "
                f"floor {r['floor_seconds']:.3f} s, ratio {r['ratio']:.2f} (r={r['params']['r']}, c={r['params']['c']})"
            )
        elif r.get("kind") == "phases":  # drfm bench rfm: a whole fit's phases against their floors
            cells = "  ".join(f"{name} {v['seconds']:.2f} s" + ("" if v["ratio"] is None else f" ({v['ratio']:.1f}x)")
                              for name, v in r["phases"].items())
            rows.append(f"{'phases':<12} {r['dataset'] + ' ' + r['path']:<20} n={r['n']:<7} fit "
                        f"{r['fit_seconds']:.2f} s: {cells}  other {r['other_seconds']:.2f} s (x: against the floor)")
        elif r.get("kind") == "fit" and "world_size" in r:  # drfm bench distributed: a whole fit on P processes
            share = r.get("comm_share")
            rows.append(
                f"{r.get('dataset', ''):<12} {'P=%d' % r['world_size']:<6} n={r['n']:<9} fit {r['fit_seconds']:9.1f} s  "
                f"{r['metric']} {r['score']:.4f}  CG step {r['step_seconds']:.2f} s x {r['cg_iterations']}, "
                f"{r['bytes_per_step']} B/step, communication {'-' if share is None else f'{100 * share:.1f}%'}  "
                f"peak RSS/rank {max(r['peak_rss_bytes_per_rank']) / 2**30:.2f} GiB"
            )
        elif "fit_seconds" not in r:  # a kind this table does not know: its fields as they are
            rows.append(f"{r.get('kind', '?'):<12} {r.get('model', ''):<20} n={r.get('n', '')}: "
                        + ", ".join(f"{k}={v}" for k, v in r.items() if isinstance(v, (int, float))))
        else:
            model = r.get("model", "") + (f" [{r['variant']}]" if r.get("variant") else "")
            rows.append(
                f"{r.get('dataset', ''):<12} {model:<20} n={r['n']:<7} fit {r['fit_seconds']:8.2f} s  "
                f"predict {r.get('predict_seconds', float('nan')):6.2f} s  {r['metric']} {r['score']:.4f}  "
                f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB  ({r['device']})"
            )
    reasons = sorted({str(r["skipped"]) for r in res if "skipped" in r and "\n" in str(r["skipped"])})
    if reasons:  # a long reason (the folders a dataset was looked for in) once, below the table
        rows.append("skipped because:\n" + "\n".join("  " + ln for why in reasons for ln in why.splitlines()))
    if res:
        rows.append(f"results: {res[0]['results_file']}")
    return "\n".join(rows)
