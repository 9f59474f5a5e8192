"""Entry point: `python -m omniopd.train [--config FILE] [--section.key=value ...] [--dry-run]`, or under torchrun.

`--dry-run` (or `--train.dry_run=true`) prints what the teacher will cost, from one real rollout batch, and exits
without training (omniopd/dryrun.py).

With no arguments it runs the built-in offline default (bundled SmolLM2 student and teacher, bundled
MiniLM for phi, the built-in addition task) and writes logs, a checkpoint, an HF export and plots.
"""

from __future__ import annotations

import sys

from omniopd.config import ConfigError, help_text, load_config
from omniopd.runlog import quiet_libraries


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip(), end="\n\n")
        print(help_text())
        return 0
    if "--dry-run" in argv:
        argv = [a for a in argv if a != "--dry-run"] + ["--train.dry_run=true"]
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"omniopd.train: error: {e}", file=sys.stderr)
        return 2
    quiet_libraries(cfg.log.verbosity)  # before vLLM and transformers are imported: they read it then
    from omniopd import dryrun

    if cfg.train.dry_run:
        return dryrun.run(cfg)
    from omniopd.trainer import Trainer  # heavy imports only once the config is valid

    with Trainer(cfg) as trainer:
        summary = trainer.fit()
        if trainer.dist.is_main:
            dryrun.report_beside(cfg, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
