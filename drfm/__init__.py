"""drfm: Deep Recursive Feature Machines.

Kernel machines that learn features through the Average Gradient Outer Product (AGOP), and instruments for deep
neural collapse. The numerical core lives in the sibling package :mod:`kernels` (torch only).
"""
from .rfm import RFMClassifier, RFMRegressor

__version__ = "0.1.0"
__all__ = ["RFMClassifier", "RFMRegressor", "__version__"]
