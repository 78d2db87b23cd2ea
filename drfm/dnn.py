"""Trained networks beside Deep RFM -- the namespace the docs use (``from drfm import dnn``).

It gathers :mod:`drfm.nets` (the SVD split, network AGOP and Neural Feature Ansatz for any Sequential),
:mod:`drfm.mlp` (:class:`TorchMLPClassifier`) and the side-by-side study of :mod:`drfm.studies`.
"""
from .mlp import TorchMLPClassifier
from .nets import (ACTIVATIONS, NFA_METRICS, build_mlp, layer_blocks, layer_features, mlp_collapse_report,
                   network_agop, network_view, nfa_correlations, nfa_report, pearson, psd_sqrt)
from .studies import compare, comparison_table

__all__ = [
    "ACTIVATIONS",
    "NFA_METRICS",
    "TorchMLPClassifier",
    "build_mlp",
    "compare",
    "comparison_table",
    "layer_blocks",
    "layer_features",
    "mlp_collapse_report",
    "network_agop",
    "network_view",
    "nfa_correlations",
    "nfa_report",
    "pearson",
    "psd_sqrt",
]
