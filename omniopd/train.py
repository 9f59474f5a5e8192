"""Entry point: `python -m omniopd.train [--config FILE] [--section.key=value ...] [--dry-run]`, or under torchrun.

`--dry-run` (or `--train.dry_run=true`) prints what the teacher will cost, from one real rollout batch, and exits
without training (omniopd/dryrun.py).

With no arguments it runs the built-in offline demo (bundled SmolLM2 student and teacher, the built-in
addition task) on the demo's smaller values, and writes logs, a checkpoint, an HF export and plots. Any other
student, data or a --config file runs the paper's values for what it leaves unset (train.defaults below,
omniopd/profiles.py). The first line printed names every value that differs from the paper's, and why.
Values marked "ours" are choices the paper does not state.

Exit codes: 0 done; 2 a fault you can fix (one line names the key, file and line, path or URL); 130 / 143
stopped by SIGINT / SIGTERM (after a checkpoint, unless the signal came twice); 1 a bug of ours (traceback).
"""

from __future__ import annotations

import os
import sys

from omniopd import faults
from omniopd.config import help_text, load_config
from omniopd.runlog import quiet_libraries


def _say(message: str) -> None:
    print(f"omniopd: {message}", flush=True)


def _error(message: str) -> None:
    print(f"omniopd.train: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _run(argv: list[str]) -> int:
    cfg = load_config(argv)
    rank = int(os.environ.get("RANK", "0") or 0)
    if rank == 0:
        from omniopd.profiles import first_line

        print(first_line(cfg), flush=True)  # the first line: what differs from the paper's method, and why
    if cfg.train.dry_run:  # a cost estimate: it takes no lock and touches no run state
        if rank != 0:  # under torchrun one estimate is the answer: the other ranks have nothing to do
            return faults.EXIT_OK
        from omniopd.preflight import check_data  # light: no torch

        check_data(cfg)  # bad rows fail in a second, not after the models load
        quiet_libraries(cfg.log.verbosity)
        from omniopd import dryrun

        return dryrun.run(cfg)
    from omniopd.preflight import preflight  # light: no torch

    lock = preflight(cfg, rank=rank, say=_say if rank == 0 else lambda _: None)
    from omniopd.signals import StopSignals  # light

    # a signal while the models load: a request, seen once they are built
    signals = StopSignals(announce=rank == 0).install()
    try:
        quiet_libraries(cfg.log.verbosity)  # before vLLM and transformers are imported: they read it then
        from omniopd import dryrun
        from omniopd.trainer import Trainer  # heavy imports only once the inputs are checked

        with Trainer(cfg, stop_signals=signals) as trainer:
            if trainer.stop_requested():  # every rank asks: one collective
                raise StoppedWhileLoading
            summary = trainer.fit()
            if trainer.dist.is_main:
                dryrun.report_beside(cfg, summary)
    finally:
        signals.restore()
        if lock is not None:
            lock.release()
    return faults.EXIT_OK


class StoppedWhileLoading(KeyboardInterrupt):
    """A stop signal came while the models loaded: nothing was trained, so there is nothing to save."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip(), end="\n\n")
        print(help_text())
        return 0
    if "--dry-run" in argv:
        argv = [a for a in argv if a != "--dry-run"] + ["--train.dry_run=true"]
    try:
        return _run(argv)
    except StoppedWhileLoading:
        _error(f"stopped by {faults.stop_signal_name()} while the models loaded: nothing was trained and no "
               "checkpoint exists yet")
        return faults.stop_exit_code()
    except faults.StopNow as stop:
        _error(f"stopped at once by a second {faults.stop_signal_name()}: no checkpoint of the step in flight "
               "(--resume continues from the newest intact one)")
        return 128 + stop.signum
    except faults.StopAtStepBoundary:
        _error(f"stopped by {faults.stop_cause()} after saving a checkpoint (continue with --resume)")
        return faults.stop_exit_code()
    except KeyboardInterrupt:
        _error(f"stopped by {faults.stop_signal_name()} before training started")
        return faults.stop_exit_code()
    except faults.user_fault_types() as e:
        _error(str(e))
        return faults.EXIT_USER


if __name__ == "__main__":
    sys.exit(main())
