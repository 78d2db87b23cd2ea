"""Former home of the RFM loop, kept so that ``import drfm._engine`` keeps working: the module *is*
:mod:`drfm.engine.loop` (the same object, so setting a constant here sets it there)."""
import sys

from .engine import loop as _loop

sys.modules[__name__] = _loop
