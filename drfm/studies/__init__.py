"""Experiments built on the public API: the collapse study, Deep RFM against a trained MLP, feature learning against
plain kernels (:mod:`drfm.studies.experiments`), the seed paper's experiment (:mod:`drfm.studies.reproduce`) and the
benchmark runner (:mod:`drfm.studies.bench`)."""
from .experiments import *  # noqa: F401,F403
from .experiments import __all__
