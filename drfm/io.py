"""Former home of :mod:`drfm.data.io`:
this module *is* that one (old imports keep working, and setting a name here sets it there)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("drfm.data.io")
