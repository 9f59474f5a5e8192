"""Ctrl-C and SIGTERM as a request to stop at the next step boundary (the trainer saves, then exits non-zero)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

from omniopd import faults


class StopSignals:
    """Ctrl-C / SIGTERM as a request: the first one lets the running step finish, then fit() saves a checkpoint
    and exits non-zero; a second one interrupts at once. A KeyboardInterrupt raised at an arbitrary point can
    land inside a finalizer (`__del__`, a weakref callback), where Python prints it and drops it: the run then
    trained on to the end and exited 0."""

    ECHO_S = 1.0  # a repeat this soon is the same request: torchrun forwards the terminal's Ctrl-C to ranks
    # that already got it from the terminal (run torchrun with --shutdown_timeout longer than a step, or it
    # kills the ranks before they save)

    def __init__(self, *, announce: bool = True):
        self.announce = announce  # under torchrun only rank 0 says it: every rank gets the terminal's signal
        self.requested = False
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            if time.monotonic() - self._first > self.ECHO_S:
                raise faults.StopNow(signum)
            return
        faults.note_signal(signum)
        self.requested, self._first = True, time.monotonic()
        if self.announce:
            print(f"omniopd: {signal.Signals(signum).name} received: stopping after this step with a checkpoint "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)
