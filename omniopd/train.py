"""Entry point: `python -m omniopd.train [--config FILE] [--section.key=value ...]`, or under torchrun.

With no arguments it runs the built-in offline demo (bundled SmolLM2 student and teacher, the built-in
addition task) on the demo's smaller values, and writes logs, a checkpoint, an HF export and plots. Any other
student, data or a --config file runs the paper's values for what it leaves unset (train.defaults below,
omniopd/profiles.py). The first line printed names every value that differs from the paper's, and why.
Values marked "ours" are choices the paper does not state.
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
    from omniopd.profiles import first_line

    print(first_line(cfg), flush=True)  # the first line: what differs from the paper's method, and why
    quiet_libraries(cfg.log.verbosity)  # before vLLM and transformers are imported: they read it then
    from omniopd.trainer import Trainer  # heavy imports only once the config is valid

    with Trainer(cfg) as trainer:
        trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
