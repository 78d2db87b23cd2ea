"""What a fit decides once: where it runs, in what precision, under how many bytes, with which random draws, who is
speaking in messages, and over which ranks.

:class:`Runtime` is handed to the RFM loop (:func:`drfm.engine.loop.run_rfm`). Its ``comm`` is the rank group: a
:class:`~kernels.distributed.LocalComm` (one process, every collective an identity) or a
:class:`~kernels.distributed.Comm` over the ranks of a ``torch.distributed`` process group, created for the fit with
the estimator's ``distributed_timeout``. The loop is the same code either way; only the collectives differ.

What the ranks agree on before any heavy work (:func:`runtime_for` and :mod:`drfm.engine.agree`): the estimator's
parameters, the generator (rank 0's seed), the memory budget (the smallest of the ranks'; a host's memory is shared
among its ranks by default).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from kernels.distributed import DEFAULT_TIMEOUT, Comm, LocalComm

from .._backend import make_generator, resolve_budget, resolve_device, resolve_dtype

__all__ = ["Runtime", "runtime_for", "DEFAULT_TIMEOUT_S"]

#: the estimators' default ``distributed_timeout`` (seconds)
DEFAULT_TIMEOUT_S = DEFAULT_TIMEOUT.total_seconds()


@dataclass
class Runtime:
    """The decisions of one fit that every solve shares.

    device, dtype : where and in what precision the tensors live.
    budget : bytes the fit may use (this rank's; the same on every rank).
    generator : every random draw of the fit (the same stream on every rank).
    owner : the estimator's name, for messages.
    comm : the rank group (:class:`~kernels.distributed.LocalComm` for one process).
    """

    device: torch.device
    dtype: torch.dtype
    budget: int
    generator: torch.Generator
    owner: str
    comm: object

    @property
    def distributed(self) -> bool:
        return self.comm.world_size > 1

    def with_generator(self, generator: torch.Generator, owner: str | None = None, budget: int | None = None):
        """The same runtime with another generator (a Deep RFM layer's own seed), owner or budget."""
        return Runtime(self.device, self.dtype, self.budget if budget is None else int(budget), generator,
                       self.owner if owner is None else owner, self.comm)


def open_comm(estimator, owner: str):
    """The rank group of a fit: a :class:`~kernels.distributed.Comm` with the estimator's timeout when it is
    ``distributed``, else a :class:`~kernels.distributed.LocalComm`."""
    if not estimator.distributed:
        return LocalComm()
    return Comm(timeout=timedelta(seconds=float(estimator.distributed_timeout)), owner=owner)


def runtime_for(estimator, owner: str, comm) -> Runtime:
    """The runtime of ``estimator``'s fit over ``comm``: its device, dtype and budget resolved, its generator from
    ``random_state`` (rank 0's draw on every rank: with a fixed seed the single-process stream itself)."""
    device = resolve_device(estimator.device, owner)
    budget = resolve_budget(estimator.memory_budget, device)
    gen = make_generator(estimator.random_state)
    if comm.world_size > 1:
        gen.set_state(comm.broadcast(gen.get_state()))
        if estimator.memory_budget is None:
            # the ranks of one host share its memory: each takes its share of what is available
            hosts = [h for h, _ in comm.peers]
            budget //= hosts.count(hosts[comm.rank])
        budget = comm.min_int(budget)
        # one thread count on every rank: each rank solves the replicated systems (the m-centre factors, CG's
        # vectors) itself, and counts that differ round them differently -- a stopping decision taken one step apart
        # would leave the ranks in different collectives. n_threads='auto' measures each rank's idle cores, so the
        # ranks take the smallest (torch's intra-op count, set inside the estimator's thread limit, restored after)
        torch.set_num_threads(comm.min_int(torch.get_num_threads()))
    return Runtime(device, resolve_dtype(estimator.dtype), budget, gen, owner, comm)


def labels_of_all_ranks(comm, y) -> np.ndarray:
    """Every rank's labels / targets in rank order (this rank's own array on one process)."""
    if comm.world_size == 1:
        return y
    parts = comm.gather_objects(np.asarray(y))
    return np.concatenate(parts, 0)
