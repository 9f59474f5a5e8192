"""A second stop signal (faults.StopNow) ends the run as a failure: the trainer marks it failed, as it does for
any other error, so its clean-up issues no collective that the interrupted ranks may never join. Light: a bare
Trainer (nothing built) goes through the same `with` exit the run takes; no model loads."""

from __future__ import annotations

import signal

import pytest

from omniopd import faults, parallel
from omniopd.trainer import Trainer


@pytest.fixture
def bare_trainer(monkeypatch):
    monkeypatch.setattr(parallel, "_failed", False)  # the process-wide flag, restored after the test
    trainer = object.__new__(Trainer)  # what __init__ leaves when the stop lands before anything was built
    trainer._stop_signals = None
    return trainer


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_stop_signal_marks_the_run_failed(bare_trainer, sig):
    stop = faults.StopNow(sig)
    bare_trainer.__exit__(type(stop), stop, None)
    assert parallel._failed


def test_a_first_stop_signal_is_an_orderly_stop_and_an_error_a_failure(bare_trainer, monkeypatch):
    bare_trainer.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)  # saved at a step boundary
    assert not parallel._failed
    error = RuntimeError("an OOM, say")
    bare_trainer.__exit__(type(error), error, None)
    assert parallel._failed
