"""Analysis of trained networks beside kernel machines: any torch ``Sequential`` split into linear (``S V^T``) and
nonlinear stages, its AGOP and the Neural Feature Ansatz (:mod:`drfm.networks.analysis`); convolutional backbones
in front of the MLP head (:mod:`drfm.networks.backbones`)."""
from .analysis import *  # noqa: F401,F403
from .analysis import __all__  # noqa: F401
