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
