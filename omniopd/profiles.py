"""Which values a run gets for the keys it leaves unset: the paper's, or the offline demo's (one mechanism).

The library's defaults (the dataclass defaults in `config.py`) are the paper's method values, `PAPER` below
(docs/design.md §1, "Defaults", has the table and where each is read from). The built-in offline demo - the bundled
135M student on the built-in task, `python -m omniopd.train` - cannot run them on a CPU in minutes, so it
starts from `DEMO` instead. `train.defaults` picks: 'paper', 'demo', or 'auto' (the demo for the bundled
student and the bundled local teacher on the built-in addition task without a `--config` file; 'paper' for
anything else: another student, an API or other teacher, other data, a config file). Whatever the file or
the command line sets wins over both. Every run's first console line names each value that differs from the
paper's and why (`first_line`), and summary.json records them (`differences`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omniopd.config import Config, set_value

BUNDLED_STUDENT = "smollm2-135m"
BUNDLED_TEACHER = "smollm2-135m"  # TeacherConfig.model's default: the bundled model as the local teacher

PAPER: dict[str, Any] = {
    "audit.similarity": "ned",
    "audit.num_chunks": 10,
    "audit.num_continuations": 10,
    "audit.chunk_len": 50,
    "audit.alpha": 1.0,
    "objective.beta": 0.1,
    "teacher.hint": "none",
    "audit.selection": "entropy",
}
"""The paper's values of the method's knobs (M, N, C, alpha, beta, phi, what the teacher sees, selection)."""


@dataclass(frozen=True)
class DemoValue:
    value: Any
    why: str


_COST = ("the paper's M, N, C ask the teacher for M*N*2C = 10,000 tokens per response, the demo's for 128 "
         "(the demo's whole run: about 5 minutes on 2 CPU cores)")
DEMO: dict[str, DemoValue] = {
    "audit.num_chunks": DemoValue(2, _COST),
    "audit.num_continuations": DemoValue(4, _COST),
    "audit.chunk_len": DemoValue(8, "a 96-token answer holds at most one chunk of 50"),
    "generation.max_new_tokens": DemoValue(96, "the built-in addition task needs short answers"),
    "teacher.hint": DemoValue("solution", "the bundled 135M teacher is no teacher without the reference "
                                          "solution"),
}
"""The demo's values, each with why it differs from the paper (or from our default where the paper is silent)."""


def resolve_defaults(cfg: Config, *, config_file: bool) -> str:
    """'paper' or 'demo' for `cfg.train.defaults` ('auto': the demo only for the bundled student taught by the
    bundled local teacher on the built-in addition task, with no config file; an API or other teacher gets the
    paper's values, and the chained task's worked solutions do not fit the demo's 96 tokens)."""
    if cfg.train.defaults != "auto":
        return cfg.train.defaults
    demo = (cfg.model.student == BUNDLED_STUDENT and cfg.teacher.kind == "local"
            and cfg.teacher.model == BUNDLED_TEACHER and cfg.data.train == "builtin"
            and cfg.data.task == "addition" and not config_file)
    return "demo" if demo else "paper"


def apply_demo(cfg: Config) -> Config:
    for key, demo in DEMO.items():
        set_value(cfg, key, demo.value)
    return cfg


def get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def differences(cfg: Config) -> dict[str, dict[str, Any]]:
    """Every value of `cfg` that the first line names: each method value that is not the paper's,
    `{key: {value, paper, why}}`, and the demo's response limit, which the paper does not state
    (`{value, paper: 'not stated', ours, why}`). Omniopd runs only: the baselines have no forks, teacher votes
    or anchor. A demo value says why the demo keeps it; anything else was set by the run."""
    if cfg.objective.name != "omniopd":
        return {}
    demo = cfg.train.defaults == "demo"
    out: dict[str, dict[str, Any]] = {}
    for key, paper in PAPER.items():
        value = get(cfg, key)
        if value != paper:
            kept = DEMO.get(key)
            why = kept.why if demo and kept is not None and kept.value == value else "set by this run"
            out[key] = {"value": value, "paper": paper, "why": why}
    limit = DEMO["generation.max_new_tokens"]
    if demo and cfg.generation.max_new_tokens == limit.value:
        out["generation.max_new_tokens"] = {"value": limit.value, "paper": "not stated",
                                            "ours": Config().generation.max_new_tokens, "why": limit.why}
    return out


def first_line(cfg: Config) -> str:
    """The run's first console line: every value in `differences` and why, or that the method's are the paper's."""
    if cfg.objective.name != "omniopd":
        return f"omniopd: objective.name={cfg.objective.name} (a baseline; the paper's method is omniopd)"
    diffs = differences(cfg)
    if not diffs:
        return "omniopd: the paper's method values (" + ", ".join(f"{k}={v}" for k, v in PAPER.items()) + ")"
    parts = [f"{k}={d['value']} " + (f"(ours otherwise: {d['ours']})" if "ours" in d else f"(paper: {d['paper']})")
             for k, d in diffs.items()]
    whys = list(dict.fromkeys(d["why"] for d in diffs.values() if d["why"] != "set by this run"))
    if any(d["why"] == "set by this run" for d in diffs.values()):
        whys.append("set by this run")
    demo = cfg.train.defaults == "demo"
    head = "the offline demo differs from the paper" if demo else "this run differs from the paper"
    tail = " (--train.defaults=paper runs the paper's)" if demo else ""
    return f"omniopd: {head}: {', '.join(parts)}. Why: {'; '.join(whys)}.{tail}"
