"""drfm: Deep Recursive Feature Machines.

Kernel machines that learn features through the Average Gradient Outer Product (AGOP), and instruments for deep
neural collapse. The numerical core lives in the sibling package :mod:`kernels` (torch only).
"""
__version__ = "0.1.0"

from .engine import KernelScaleWarning  # noqa: E402
from .deep import DeepRFMClassifier, DeepRFMRegressor  # noqa: E402
from .mlp import TorchMLPClassifier  # noqa: E402
from .rfm import RFMClassifier, RFMRegressor  # noqa: E402

__all__ = ["DeepRFMClassifier", "DeepRFMRegressor", "KernelScaleWarning", "RFMClassifier", "RFMRegressor",
           "TorchMLPClassifier", "__version__"]
