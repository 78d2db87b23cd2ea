"""`drfm demo`."""
from __future__ import annotations



from ._common import common


def register(add) -> None:
    """The `drfm demo` parser (``add(name, **kw)`` makes a subparser)."""
    sp = add("demo", help="fit an RFM classifier on the bundled digits and report accuracy and AGOP")
    sp.add_argument("--iters", type=int, default=5, help="number of AGOP iterations of the RFM (default 5)")
    sp.add_argument("--depth", type=int, default=8, help="depth of the Deep RFM collapse study (default 8)")
    sp.add_argument("--seed", type=int, default=0, help="random seed for the split and the model")
    common(sp)
    sp.set_defaults(func=cmd_demo, show=show_demo)


def cmd_demo(args) -> dict:
    from ..studies import demo

    return demo(iters=args.iters, depth=args.depth, device=args.device, seed=args.seed, verbose=args.verbose)

def show_demo(res: dict) -> str:
    eig = ", ".join(f"{v:.4f}" for v in res["top_agop_eigenvalues"])
    deep = res["deep_rfm"]
    return (
        f"RFM classifier on digits ({res['n_train']} train / {res['n_test']} test, {res['iters']} AGOP iterations, "
        f"device {res['device']})\n"
        f"  test accuracy      {res['test_accuracy']:.4f}\n"
        f"  fit time           {res['fit_seconds']:.2f} s\n"
        f"  top AGOP eigvals   {eig}\n"
        f"  AGOP effective rank {res['agop_effective_rank']:.1f} (of 64 pixels)\n\n"
        f"Deep RFM collapse study on digits (depth {deep['depth']}, {deep['feature_map']} features): test accuracy "
        f"{deep['test_accuracy']:.4f}, fit {deep['fit_seconds']:.2f} s\n{deep['table']}\n\n{deep['summary']}"
    )
