"""What a run that goes wrong reports: one line, one exit code (README, "When a run goes wrong").

A fault the user can cause and fix (a config key, a data row, a path, a checkpoint, a changed config on
resume, a teacher that does not answer) ends the run with `EXIT_USER` and one line naming the culprit.
A bug of ours keeps Python's traceback and exit code 1. A stop signal ends with 128 + the signal's
number, as shells report a process killed by it.
"""

from __future__ import annotations

import signal
import sys

EXIT_OK = 0
EXIT_INTERNAL = 1  # an uncaught exception: a bug of ours, traceback shown
EXIT_USER = 2  # a fault the user can fix: one line naming the culprit
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class RunFault(RuntimeError):
    """A user-fixable fault found by the run itself (lock, checkpoint, resume, export, teacher address);
    the message names the culprit."""


class StopAtStepBoundary(KeyboardInterrupt):
    """A stop signal honoured between steps, after a checkpoint: on a rank that got it, or on a peer of one
    (under torchrun the signal may reach one rank only; every rank stops at the same boundary)."""


class StopNow(KeyboardInterrupt):
    """A second stop signal: leave at once, without the checkpoint the first one asked for."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_received: list[int] = []


def note_signal(signum: int) -> None:
    """Record a stop signal (the handler calls it), so the exit code can say which one stopped the run."""
    _received.append(signum)


def received_signal() -> int | None:
    return _received[0] if _received else None


def stop_exit_code() -> int:
    """128 + the first stop signal received; SIGINT's when none was recorded (a Ctrl-C before the handler)."""
    return 128 + (_received[0] if _received else signal.SIGINT)


def stop_signal_name() -> str:
    return signal.Signals(_received[0]).name if _received else "SIGINT"


def stop_cause() -> str:
    """What stopped a run at a step boundary: this rank's signal, else a peer's."""
    return stop_signal_name() if _received else "a stop signal on another rank"


def user_fault_types() -> tuple[type[BaseException], ...]:
    """Every exception type that means "the user can fix this": reported in one line, exit 2.

    Imported lazily: most live in modules that import torch, and the config errors are raised before that."""
    from omniopd.assets import AssetError
    from omniopd.config import ConfigError
    from omniopd.eval.data import DataError
    from omniopd.rollout.teachers.secrets import MissingKeyError

    types: list[type[BaseException]] = [ConfigError, DataError, RunFault, AssetError, MissingKeyError]
    trainer = sys.modules.get("omniopd.trainer")  # only once it was imported: importing it costs seconds
    if trainer is not None:  # its own stop conditions: a teacher dead for max_failed_steps, non-finite steps
        types += [trainer.NonFiniteError, trainer.TeacherDeadError]
    return tuple(types)
