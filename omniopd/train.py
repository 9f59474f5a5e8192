"""Entry point: `python -m omniopd.train [--config FILE] [--section.key=value ...]`, or under torchrun.

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
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"omniopd.train: error: {e}", file=sys.stderr)
        return 2
    quiet_libraries(cfg.log.verbosity)  # before vLLM and transformers are imported: they read it then
    from omniopd.trainer import Trainer  # heavy imports only once the config is valid

    with Trainer(cfg) as trainer:
        trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
