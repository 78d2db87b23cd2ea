"""What the subcommands share: the user-error type, the model families, ``--param`` parsing, common arguments."""
from __future__ import annotations

__all__ = ["MODELS", "UsageError", "common", "threads_value", "csv_header_arg", "data_home_arg", "deep_rfm_args", "metrics_arg", "model_class",
           "parse_params"]


class UsageError(Exception):
    """A user error: reported as one line on stderr with exit code 2."""


MODELS = {
    # name: (classifier class path, regressor class path or None)
    "rfm": ("drfm.rfm:RFMClassifier", "drfm.rfm:RFMRegressor"),
    "deep-rfm": ("drfm.deep:DeepRFMClassifier", "drfm.deep:DeepRFMRegressor"),
    "mlp": ("drfm.mlp:TorchMLPClassifier", None),
}



def parse_params(items: list[str]) -> dict:
    import ast

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects KEY=VALUE, got {item!r}")
        booleans = {"true": True, "false": False, "none": None}
        if value.strip().lower() in booleans:  # early_stopping=false / FALSE / False; n_centres=none
            out[key.strip()] = booleans[value.strip().lower()]
            continue
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value  # a plain string such as solver=cg
    return out


def model_class(name: str, task: str):
    import importlib

    cls_path = MODELS[name][0 if task == "classification" else 1]
    if cls_path is None:
        raise UsageError(f"model {name!r} supports classification only")
    module, cls = cls_path.split(":")
    return getattr(importlib.import_module(module), cls)


def threads_value(text: str):
    """``--threads``: a positive int or 'auto'."""
    import argparse

    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads or 'auto', got {text!r}")
    return n


def common(sp, device="auto", device_help="'auto' (CUDA if available), 'cpu' or 'cuda[:N]'"):
    sp.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--verbose", "-v", dest="verbose", action="store_const", const=True, default=None,
                   help="show progress bars (default: on when stderr is a terminal)")
    g.add_argument("--quiet", "-q", dest="verbose", action="store_const", const=False,
                   help="no progress bars, even on a terminal")
    sp.add_argument("--threads", type=threads_value, default=None, metavar="N|auto",
                    help="CPU threads for the whole command: a number, or 'auto' (the cores other processes leave "
                         "idle; faster on a busy machine); default: torch's setting (all usable cores)")
    if device:
        sp.add_argument("--device", default=device, help=device_help)

def metrics_arg(sp):
    sp.add_argument("--metrics", nargs="+", default=["nc1", "nc2"],
                    help="metrics: nc1 nc1_papyan nc2 nc2_equinorm nc2_equiangularity cdnv nc1_sphere nc2_sphere "
                         "(on features normalised to the unit sphere) label_alignment effective_features "
                         "mf_share (the kernel picture: participation ratio, variance share of the top K-1 "
                         "eigenvalues of the centred covariance; mf_share_gd: of the top K of the uncentred "
                         "gradient-descent operator, as the source defines it), and per layer nc3 (against the layer's least-squares readout), nc4 "
                         "(against the model's predictions), linear_cka (against the one-hot labels) "
                         "(default nc1 nc2); also nc2_uniformity, within_share, between_share, nc3_uniform")

def csv_header_arg(sp):
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--header", dest="header", action="store_const", const=True, default=None,
                   help="CSV files start with a row of column names")
    g.add_argument("--no-header", dest="header", action="store_const", const=False,
                   help="CSV files have no row of column names (default: the first row is names only when none of "
                        "its fields is a number and the next row has one)")


def data_home_arg(sp):
    sp.add_argument("--data-home", default=None,
                    help="folder holding the MNIST / Fashion-MNIST / CIFAR-10 files (default: $DRFM_DATA, "
                         "~/.cache/drfm)")

def deep_rfm_args(sp):
    sp.add_argument("--feature-map", default="cosine", choices=["cosine", "relu", "none"],
                    help="Deep RFM random feature map after each layer's M^{1/2} (default cosine)")
    sp.add_argument("--sigma", type=float, default=0.05, help="Cauchy scale of the cosine map (default 0.05)")
    sp.add_argument("--bandwidth", type=float, default=2.0, help="Laplace bandwidth per layer (default 2)")

