"""`drfm datasets`."""
from __future__ import annotations



from ._common import common, data_home_arg


def register(add) -> None:
    """The `drfm datasets` parser (``add(name, **kw)`` makes a subparser)."""
    sp = add("datasets", help="list the datasets available offline, and where the image sets were found")
    data_home_arg(sp)
    common(sp, device=None)
    sp.set_defaults(func=cmd_datasets, show=show_datasets)


def cmd_datasets(args) -> dict:
    from ..data.datasets import available

    return available(args.data_home)

def show_datasets(res: dict) -> str:
    width = max(len(k) for k in res)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in res.items())
