"""`drfm feature-learning`."""
from __future__ import annotations

import json


from ._common import UsageError, common


def register(add) -> None:
    """The `drfm feature-learning` parser (``add(name, **kw)`` makes a subparser)."""
    sp = add("feature-learning", help="when feature learning hurts: RFM against the same kernel without feature "
                                      "learning (iters=0), test error against n, on a target smooth in every "
                                      "direction and on a low-rank target (points on the unit sphere)")
    sp.add_argument("--n", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000], help="training sizes")
    sp.add_argument("--d", type=int, default=20, help="input dimension (default 20)")
    sp.add_argument("--iters", type=int, default=5, help="RFM's AGOP steps (default 5)")
    sp.add_argument("--seeds", type=int, default=1, help="repetitions with seeds 0..SEEDS-1 (default 1)")
    sp.add_argument("--out", help="write the rows here (JSON)")
    sp.add_argument("--plot", help="write the figure here (needs matplotlib)")
    common(sp)
    sp.set_defaults(func=cmd_feature_learning, show=show_feature_learning)


def cmd_feature_learning(args) -> dict:
    from ..studies import feature_learning_study, plot_feature_learning

    if any(n < 2 for n in args.n) or args.d < 2 or args.seeds < 1 or args.iters < 1:
        raise UsageError("--n sizes and --d must be >= 2, --seeds and --iters >= 1")
    rows = feature_learning_study(sizes=tuple(args.n), d=args.d, iters=args.iters, seeds=tuple(range(args.seeds)),
                                  device=args.device, verbose=args.verbose)
    if args.out:
        from ..data.files import write_text

        write_text(args.out, json.dumps(rows, indent=1), what="--out")
    if args.plot:
        plot_feature_learning(rows, args.plot)
    return {"rows": rows, "out": args.out, "plot": args.plot}

def show_feature_learning(res: dict) -> str:
    table = {}
    for r in res["rows"]:
        table.setdefault((r["target"], r["n"]), {}).setdefault(r["model"], []).append(r["test_rel_mse"])
    lines = ["| target | n | kernel, iters=0 | RFM | RFM / kernel |", "|---|---|---|---|---|"]
    for (target, n), by in table.items():
        k, f = (sum(by[m]) / len(by[m]) for m in ("kernel (iters=0)", "rfm"))
        lines.append(f"| {target} | {n} | {k:.4g} | {f:.4g} | {f / k:.3g} |")
    tail = "".join(f"\n{k}: {res[k]}" for k in ("out", "plot") if res.get(k))
    return "test MSE / var(y), mean over seeds (RFM / kernel > 1: feature learning hurt)\n" + "\n".join(lines) + tail
