"""kernels.phases: exclusive times of nested phases (a fake clock), the kernel phase's work counts, off by default."""
import pytest
import torch

import kernels.phases as phases
from kernels.family import Kernel
from kernels.phases import PhaseClock, phase


def test_nested_phases_keep_exclusive_times(monkeypatch):
    ticks = iter([0.0, 1.0, 3.0, 7.0, 8.0, 20.0, 21.0, 30.0])  # clock start, then every boundary in order
    monkeypatch.setattr(phases.time, "perf_counter", lambda: next(ticks))
    with PhaseClock() as clock:  # 0
        with phase("solve"):  # 1
            with phase("kernel", gemm_flops=10, exp_values=2):  # 3 .. 7: 4 s of kernel inside the solve
                pass
        # solve ends at 8: 7 s in all, 3 of them its own
        with phase("kernel", gemm_flops=5, exp_values=1):  # 20 .. 21
            pass
    # the clock ends at 30
    assert clock.seconds == {"solve": 3.0, "kernel": 5.0} and clock.calls == {"solve": 1, "kernel": 2}
    assert clock.work == {"kernel": {"gemm_flops": 15, "exp_values": 3}}
    assert clock.wall == 30.0 and clock.other == 22.0
    assert clock.to_dict()["other"] == 22.0


def test_kernel_matrix_counts_its_work_and_nothing_records_without_a_clock():
    x, z = torch.randn(7, 5), torch.randn(11, 5)
    for name in ("laplace", "gaussian", "product_laplace"):
        with PhaseClock() as clock:
            Kernel(name, 2.0).matrix(x, z)
        work = clock.work["kernel"]
        assert work["exp_values"] == 77 and clock.calls["kernel"] == 1
        assert work.get("gemm_flops", 0) == (2 * 7 * 11 * 5 if name != "product_laplace" else 0)
        assert work.get("l1_ops", 0) == (7 * 11 * 5 if name == "product_laplace" else 0)
    assert phases._clock is None
    assert phase("kernel", gemm_flops=1).__enter__() is None  # the no-op context


def test_one_clock_at_a_time():
    with PhaseClock():
        with pytest.raises(RuntimeError, match="already recording"):
            PhaseClock().__enter__()
    assert phases._clock is None
