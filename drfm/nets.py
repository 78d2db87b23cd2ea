"""Former home of :mod:`drfm.networks.analysis`:
this module *is* that one (old imports keep working, and setting a name here sets it there)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("drfm.networks.analysis")
