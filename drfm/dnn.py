"""Trained networks beside Deep RFM -- the namespace the docs use (``from drfm import dnn``).

It gathers :mod:`drfm.networks.analysis` (the SVD split, network AGOP and Neural Feature Ansatz for any Sequential:
everything in its ``__all__``), :mod:`drfm.mlp` (:class:`TorchMLPClassifier`) and the side-by-side study of
:mod:`drfm.studies`.
"""
from .networks import analysis as _analysis
from .mlp import TorchMLPClassifier
from .networks.analysis import *  # noqa: F401,F403 - re-exported as listed in networks.analysis.__all__
from .studies import compare, comparison_table

__all__ = ["TorchMLPClassifier", "compare", "comparison_table", *_analysis.__all__]
