"""The RFM engine: the loop, once, for RFM, every Deep RFM layer, one process or N ranks.

* :mod:`drfm.engine.runtime`: what a fit decides once (device, dtype, budget, generator, owner, rank group);
* :mod:`drfm.engine.loop`: the RFM loop (:func:`run_rfm`), its memory plan, bandwidth and early stopping;
* :mod:`drfm.engine.agree`: what the ranks of a distributed fit agree on before any heavy work (parameters, data
  checks, label types, categories, classes, standardisation);
* :mod:`drfm.engine.machine`: the fitted kernel machine used by the loop's scoring, ``predict`` and ``agop``.
"""
from .loop import KernelScaleWarning, RFMParams, RFMState, plan_layer, run_rfm
from .machine import KernelMachine
from .runtime import Runtime, runtime_for

__all__ = ["KernelMachine", "KernelScaleWarning", "RFMParams", "RFMState", "Runtime", "plan_layer", "run_rfm",
           "runtime_for"]
