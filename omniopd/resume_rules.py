"""Resume against a changed config: which keys may differ from the checkpoint's, and what that changes.

The reference is the config stored in the checkpoint itself (`checkpoint.saved_config`), not
`<log.dir>/config.json`, which every start rewrites. A key listed in `SAFE_TO_CHANGE` may differ: the
change is applied and printed. Any other difference refuses the resume, naming the key and both values,
so a key added to the config later is safe only once someone lists it here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omniopd.faults import RunFault

SAFE_TO_CHANGE = frozenset({
    # how long, how often: the run continues the same optimisation
    "train.steps", "train.max_nonfinite_steps",
    "train.eval_before", "train.eval_after", "train.eval_size", "train.eval_every",
    "checkpoint.every", "checkpoint.keep", "checkpoint.resume", "checkpoint.export", "export.overwrite",
    # learning rate and its schedule (re-applied to the restored optimizer: `apply_optim`)
    "optim.lr", "optim.warmup_steps", "optim.grad_clip", "optim.weight_decay",
    # logging: where and how much (log.dir differs when a run folder was moved)
    "log.dir", "log.tensorboard", "log.wandb", "log.plots", "log.verbosity",
    # engine and transport settings: memory, timeouts, rate limits, prices; never what is computed
    "generation.gpu_memory_utilization", "generation.kv_cache_gib", "generation.start_timeout_s",
    "generation.enforce_eager", "generation.sleep_level", "generation.max_model_len",
    "teacher.kv_cache_gib", "teacher.gpu_memory_utilization", "teacher.max_concurrency",
    "teacher.tokens_per_minute", "teacher.input_tokens_per_minute", "teacher.output_tokens_per_minute",
    "teacher.requests_per_minute", "teacher.rate_burst_s", "teacher.max_failed_steps",
    "teacher.timeout_s", "teacher.max_retries", "teacher.retry_backoff_s", "teacher.step_deadline_s",
    "teacher.price_in_per_mtok", "teacher.price_out_per_mtok", "teacher.api_key_env", "teacher.cache",
    "parallel.backend", "model.activation_checkpointing", "generation.tensor_parallel_size",
    "train.dry_run",  # a resumed dry run estimates and exits; it trains nothing
})

NOT_COMPARED = frozenset({
    # which profile chose the unset values ('paper' or 'demo'; 'auto' as stored before it was resolved). It only
    # picks values, and every value it picks is compared key by key above, so comparing the choice itself adds
    # nothing and refuses checkpoints written before the key existed (their 'auto' vs a resolved 'demo').
    "train.defaults",
})

# A key split off an older one: a checkpoint written before it existed ran with the older key's value
# (the rl baseline used objective.beta for its KL before objective.rl_beta), not with the new key's default.
SPLIT_FROM = {"objective.rl_beta": "objective.beta"}


class ResumeConfigError(RunFault):
    """The config differs from the checkpoint's in a key that is not safe to change."""


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, table in config.items() if isinstance(table, dict)
            for key, value in table.items()}


def compare(saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """The safe changes as 'key: old -> new' lines; raises on the first unsafe one. A key the checkpoint
    does not know (added since) is compared against its default, which is what that run used, or against the
    key it was split from (`SPLIT_FROM`). Keys in `NOT_COMPARED` are skipped."""
    old, new, default = _flat(saved), _flat(json.loads(json.dumps(current))), _flat(json.loads(json.dumps(defaults)))
    changes = []
    for key in sorted(new):
        if key in NOT_COMPARED:
            continue
        before = old[key] if key in old else old.get(SPLIT_FROM.get(key, ""), default.get(key))
        if before == new[key]:
            continue
        if key not in SAFE_TO_CHANGE:
            raise ResumeConfigError(f"resume: {key} was {before!r} in the checkpoint and is {new[key]!r} now; "
                                    "this key cannot change on resume (start a new --log.dir, or set it back)")
        changes.append(f"{key}: {before!r} -> {new[key]!r}")
    return changes


def apply_optim(optimizer: Any, scheduler: Any, optim_cfg: Any) -> None:
    """The restored optimizer and schedule carry the checkpoint's rate: put this run's learning rate, weight
    decay and warm-up into them, at the restored schedule position."""
    scheduler.base_lrs = [optim_cfg.lr for _ in optimizer.param_groups]
    lrs = []
    for group, lr_lambda in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = optim_cfg.lr
        group["weight_decay"] = optim_cfg.weight_decay
        group["lr"] = optim_cfg.lr * lr_lambda(scheduler.last_epoch)
        lrs.append(group["lr"])
    scheduler._last_lr = lrs


def truncate_metrics(path: Path, step: int, in_place: bool = False) -> int:
    """Cut `metrics.jsonl` back to the rows of steps <= `step` (the checkpoint's), so the resumed steps
    appear once; a line that does not parse (a half-written last line) is dropped. Returns rows dropped.
    `in_place` rewrites the same file (the run log's append handle stays valid) instead of replacing it."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and int(row.get("step", 0)) <= step
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        elif line.strip():
            dropped += 1
    if dropped and in_place:
        with path.open("r+") as f:
            f.write("".join(kept))
            f.truncate()
    elif dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
    return dropped
