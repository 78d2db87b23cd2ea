"""n_threads: applied only inside fit / predict and restored, 'auto' from the measured idle cores, the default's
contention warning, nested estimators measuring once."""
import logging
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import drfm._engine as engine
import drfm._threads as threads
from drfm import DeepRFMClassifier, RFMClassifier, RFMRegressor, TorchMLPClassifier


def _data(n=200, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, X[:, 0] * X[:, 1]


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _record_threads(monkeypatch, module, name):
    seen = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def test_n_threads_applies_inside_fit_and_predict_and_is_restored(monkeypatch, two_threads):
    X, y = _data()
    seen = _record_threads(monkeypatch, engine, "run_rfm")
    import drfm.rfm as rfm_module
    monkeypatch.setattr(rfm_module, "run_rfm", engine.run_rfm)
    model = RFMRegressor(iters=1, n_threads=1).fit(X, y)
    assert seen == [1] and model.n_threads_ == 1
    assert torch.get_num_threads() == 2
    import drfm.engine.machine as machine_module
    pred = _record_threads(monkeypatch, machine_module, "kernel_matmul")
    model.predict(X[:5])
    assert pred == [1] and torch.get_num_threads() == 2


def test_limit_is_restored_when_the_call_raises(two_threads):
    with pytest.raises(RuntimeError):
        with threads.thread_limit(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_auto_uses_the_idle_cores_and_keeps_them_for_predictions(monkeypatch, two_threads):
    X, y = _data()
    monkeypatch.delenv("DRFM_THREADS", raising=False)  # (the suite's setting replaces 'auto')
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 1.2)
    model = RFMClassifier(iters=1, n_threads="auto").fit(X, y > 0)
    assert model.n_threads_ == 1
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: pytest.fail("predict must not measure"))
    import drfm.engine.machine as machine_module
    seen = _record_threads(monkeypatch, machine_module, "kernel_matmul")
    model.predict_proba(X[:5])
    assert seen and set(seen) == {1}
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 0.0)
    assert RFMRegressor(iters=0, n_threads="auto").fit(X, y).n_threads_ == 2
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: None)  # no /proc: all usable cores
    assert RFMRegressor(iters=0, n_threads="auto").fit(X, y).n_threads_ == 2


def test_default_keeps_the_count_and_warns_under_contention(monkeypatch, caplog, two_threads):
    X, y = _data()
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 1.6)
    monkeypatch.setattr(threads, "_WARNED_AT", -float("inf"))
    with caplog.at_level(logging.WARNING, logger="drfm"):
        model = RFMRegressor(iters=0).fit(X, y)
    assert model.n_threads_ == 2
    assert "n_threads='auto'" in caplog.text and "1.6 of this process's 2 cores" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="drfm"):
        RFMRegressor(iters=0).fit(X, y)  # fits in a loop: not again within WARN_EVERY_SECONDS
    assert "n_threads" not in caplog.text
    monkeypatch.setattr(threads, "_WARNED_AT", -float("inf"))
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 0.2)
    with caplog.at_level(logging.WARNING, logger="drfm"):
        RFMRegressor(iters=0).fit(X, y)
    assert "n_threads" not in caplog.text


def test_nested_estimators_measure_once_and_use_the_outer_count(monkeypatch, two_threads):
    X, y = _data(240)
    calls = []
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: calls.append(1) or 0.0)
    deep = DeepRFMClassifier(2, n_threads=None, random_state=0).fit(X, y > 0)
    assert len(calls) == 1  # the Deep RFM's fit; its final machine's fit (nested) does not measure again
    assert deep.final_.n_threads is None
    seen = _record_threads(monkeypatch, engine, "run_rfm")
    import drfm.rfm as rfm_module
    monkeypatch.setattr(rfm_module, "run_rfm", engine.run_rfm)
    DeepRFMClassifier(2, n_threads=1, random_state=0).fit(X, y > 0)
    assert seen == [1]  # the final machine (a nested RFMRegressor.fit) ran under the Deep RFM's single thread
    assert torch.get_num_threads() == 2


def test_mlp_trains_under_its_thread_count(monkeypatch, two_threads):
    X, y = _data(120)
    import drfm.mlp as mlp_module
    seen = []
    original = mlp_module.TorchMLPClassifier._train

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mlp_module.TorchMLPClassifier, "_train", spy)
    TorchMLPClassifier(1, 8, epochs=2, lr=1e-2, n_threads=1, random_state=0).fit(X, y > 0)
    assert seen and set(seen) == {1} and torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5])
def test_bad_n_threads_is_a_clear_error(bad):
    X, y = _data(50)
    with pytest.raises(ValueError, match="'n_threads' parameter"):
        RFMRegressor(n_threads=bad).fit(X, y)


def test_busy_cores_sees_a_spinning_process():
    got = threads.busy_cores(0.05)
    if got is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= got <= threads.usable_cores() + 1e-9
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    try:
        time.sleep(0.5)
        assert threads.busy_cores(0.5) >= 0.5  # the spinning child occupies at least half a core
    finally:
        spin.kill()
        spin.wait()


def test_default_is_auto_and_drfm_threads_replaces_it(monkeypatch, two_threads):
    """The estimators' default is 'auto' (the idle cores); DRFM_THREADS replaces that default only, and a bad value
    is a clear error naming the variable."""
    X, y = _data()
    assert RFMRegressor().n_threads == "auto" and DeepRFMClassifier().n_threads == "auto"
    assert TorchMLPClassifier().n_threads == "auto"
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 1.2)
    monkeypatch.delenv("DRFM_THREADS", raising=False)
    assert RFMRegressor(iters=0).fit(X, y).n_threads_ == 1  # one core busy: one thread
    monkeypatch.setenv("DRFM_THREADS", "none")  # torch's count, as n_threads=None
    assert RFMRegressor(iters=0).fit(X, y).n_threads_ == 2
    monkeypatch.setenv("DRFM_THREADS", "1")
    model = RFMRegressor(iters=0).fit(X, y)
    assert model.n_threads_ == 1
    assert RFMRegressor(iters=0, n_threads=2).fit(X, y).n_threads_ == 2  # an explicit count is kept
    monkeypatch.setenv("DRFM_THREADS", "auto")
    assert RFMRegressor(iters=0).fit(X, y).n_threads_ == 1
    monkeypatch.setenv("DRFM_THREADS", "lots")
    with pytest.raises(ValueError, match="DRFM_THREADS"):
        RFMRegressor(iters=0).fit(X, y)


def test_auto_measures_afresh_after_a_stale_window(monkeypatch):
    """'auto' reads the counters since the previous measurement only when that was recent (<= MAX_WINDOW_SECONDS):
    older load (a finished job) must not decide the count; it probes instead."""
    slept = []
    monkeypatch.setattr(threads.time, "sleep", lambda s: slept.append(s))
    clock = iter([100.0, 103.0, 103.1, 200.0, 200.5])
    snap = lambda: (next(clock), 2, (10, 100), 0)  # noqa: E731
    monkeypatch.setattr(threads, "_snapshot", snap)
    monkeypatch.setattr(threads, "_LAST", None)
    threads._LAST = snap()  # t = 100
    threads.busy_cores(max_window=threads.MAX_WINDOW_SECONDS)  # t = 103: 3 s since: stale, probes
    assert slept == [threads.PROBE_SECONDS]
    threads._LAST = snap()  # t = 200
    threads.busy_cores(max_window=threads.MAX_WINDOW_SECONDS)  # t = 200.5: recent, free
    assert slept == [threads.PROBE_SECONDS]
