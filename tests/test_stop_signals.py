"""StopSignals: the first Ctrl-C / SIGTERM is a request, said once per run (rank 0 only under torchrun)."""

from __future__ import annotations

import os
import signal

import pytest

from omniopd import faults
from omniopd.signals import StopSignals


@pytest.mark.parametrize("announce", [True, False])
def test_a_signal_is_a_request_and_only_an_announcing_rank_says_so(capsys, monkeypatch, announce):
    monkeypatch.setattr(faults, "_received", [])  # the process-wide record the exit code reads
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals(announce=announce).install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # handled on this (main) thread before kill returns
        assert stop.requested and faults.received_signal() == signal.SIGTERM
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == before
    assert ("SIGTERM received: stopping after this step" in capsys.readouterr().err) == announce


@pytest.mark.parametrize("own_signal", [signal.SIGTERM, None])
def test_a_stop_at_a_step_boundary_names_its_cause_on_every_rank(capsys, monkeypatch, own_signal):
    """Under torchrun a signal may reach one rank only: its peers stop at the same step boundary and must say
    so, not "before training started"."""
    from omniopd import train

    monkeypatch.setattr(faults, "_received", [own_signal] if own_signal else [])

    def stopped(argv):
        raise faults.StopAtStepBoundary

    monkeypatch.setattr(train, "_run", stopped)
    assert train.main([]) == 128 + (own_signal or signal.SIGINT)
    cause = "SIGTERM" if own_signal else "a stop signal on another rank"
    assert capsys.readouterr().err.strip().endswith(f"stopped by {cause} after saving a checkpoint (continue with "
                                                    "--resume)")
