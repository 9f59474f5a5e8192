"""Teachers that only return text: OpenAI-compatible servers, Anthropic, Gemini, or a local model.

    teacher = build_teacher(cfg.teacher, cache_path=..., tokenizer_path=...)
    results = teacher.generate([TeacherRequest(messages, prefix, n=4, max_tokens=16, temperature=0.7)])
    teacher.usage(); teacher.close()

Backends import their SDK / torch lazily, so importing this package is cheap.
"""

from __future__ import annotations

from pathlib import Path

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers.base import Teacher, TeacherInputError, TeacherRequest, TeacherResult
from omniopd.rollout.teachers.cache import ResponseCache
from omniopd.rollout.teachers.secrets import MissingKeyError, scrub

__all__ = ["MissingKeyError", "Teacher", "TeacherInputError", "TeacherRequest", "TeacherResult",
           "build_teacher", "resolve_cache_path", "scrub"]


def resolve_cache_path(cfg: TeacherConfig, log_dir: str | Path) -> str | None:
    """`teacher.cache` as a path: '' -> <log_dir>/teacher_cache.sqlite, 'off' -> None."""
    if cfg.cache == "off":
        return None
    return cfg.cache or str(Path(log_dir) / "teacher_cache.sqlite")


def build_teacher(cfg: TeacherConfig, *, cache_path: str | None,
                  tokenizer_path: str | None = None, dtype: str = "float32",
                  serving_threads: int | None = None) -> Teacher:
    """The teacher `cfg.kind` names. `cache_path` None: no cache (see `resolve_cache_path`).

    `dtype`: what a local teacher computes in (the trainer passes its compute dtype); `serving_threads`: the
    torch threads its vLLM engine uses on CPU (None: the constructing thread's).
    `tokenizer_path` (an HF folder or alias of the teacher model) lets the OpenAI-compatible teacher
    apply the chat template itself and prefill through `/v1/completions` (exact prefixes).
    """
    cache = ResponseCache(cache_path) if cache_path else None
    try:
        if cfg.kind == "local":
            from omniopd.rollout.teachers.local import LocalTeacher

            return LocalTeacher(cfg, cache, dtype=dtype, serving_threads=serving_threads)
        if cfg.kind == "openai":
            from omniopd.rollout.teachers.openai_api import OpenAITeacher

            return OpenAITeacher(cfg, cache, tokenizer_path)
        if cfg.kind == "anthropic":
            from omniopd.rollout.teachers.anthropic_api import AnthropicTeacher

            return AnthropicTeacher(cfg, cache)
        if cfg.kind == "gemini":
            from omniopd.rollout.teachers.gemini_api import GeminiTeacher

            return GeminiTeacher(cfg, cache)
        raise ValueError(f"teacher.kind={cfg.kind!r}: must be 'local', 'openai', 'anthropic' or 'gemini'")
    except BaseException:
        if cache is not None:
            cache.close()
        raise
