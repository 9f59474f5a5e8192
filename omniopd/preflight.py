"""Everything a run needs from outside, checked before any model loads (seconds, not minutes).

The log dir can be created and written, and this process owns it (`runlock`); every row and field of the
local data and eval files; the export target; on resume, the newest intact checkpoint and the config
it was written with; a remote teacher's address (a connect, and a model listing where the kind offers
one: never a paid call); the teacher's completion mode, the models and the response cache
(`preflight_inputs`). Each problem raises an error naming the culprit (`faults.EXIT_USER`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from omniopd import checkpoint_files as ckpt
from omniopd.config import Config, LogConfig
from omniopd.eval.data import DataError
from omniopd.faults import RunFault
from omniopd.preflight_inputs import check_completion_mode, check_models, check_task_match, check_teacher_cache
from omniopd.resume_rules import compare, truncate_metrics
from omniopd.runlock import RunLock

TEACHER_CHECK_TIMEOUT_S = 5.0
DEFAULT_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com/v1",
                "gemini": "https://generativelanguage.googleapis.com"}  # google-genai's default base URL


def check_log_dir(cfg: Config) -> Path:
    out = Path(cfg.log.dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise RunFault(f"log.dir={cfg.log.dir}: cannot create or write the run folder ({e.strerror or e})") from e
    return out


def check_data(cfg: Config) -> None:
    """Read every row of each local prompt file as the trainer will (`data.load_split`): bad rows fail now."""
    from omniopd.data import load_split  # light: no torch

    for key, split in (("train", "train"), ("eval", "eval")):
        spec = getattr(cfg.data, key)
        if spec == "builtin" or spec.startswith("hf:"):  # built in, or a hub set only reachable online
            continue
        try:
            load_split(spec, cfg.data, split)
        except DataError as e:
            raise DataError(f"data.{key}: {e}") from e


def check_export(cfg: Config, out: Path) -> None:
    if cfg.checkpoint.export and not cfg.export.overwrite:
        problem = ckpt.export_problem(out / "export")
        if problem:
            raise ckpt.ExportTargetError(f"checkpoint.export: {problem}; the export would replace it (move it "
                                         "away, or pass --export.overwrite=true)")


def _previous_run(out: Path) -> list[str]:
    """What a finished or stopped run left in `out` that a new start would mix with or prune."""
    found = [str(p) for _, p in ckpt.checkpoints(out / "checkpoints")]
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(str(metrics))
    return found


def _is_our_demo_folder(cfg: Config, out: Path) -> bool:
    """The built-in demo in the default folder, over an earlier demo run there: `bash scripts/train.sh` twice."""
    if cfg.train.defaults != "demo" or cfg.log.dir != LogConfig().dir:
        return False
    try:
        previous = json.loads((out / "config.json").read_text())
        return previous["train"]["defaults"] == "demo" and previous["log"]["dir"] == cfg.log.dir
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_fresh_start(cfg: Config, out: Path, say: Callable[[str], None], is_main: bool) -> None:
    """A new start (no --resume) in a folder holding another run would append to its metrics and prune its
    checkpoints by step number, the new run's own among them: refused, except the demo restarting itself."""
    if cfg.checkpoint.resume:
        return
    previous = _previous_run(out)
    if not previous:
        return
    if _is_our_demo_folder(cfg, out):
        if is_main:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            (out / "metrics.jsonl").unlink(missing_ok=True)
            say(f"log.dir={cfg.log.dir}: restarting the demo: removed the previous demo run's checkpoints and "
                "metrics (--resume continues it instead)")
        return
    raise RunFault(f"log.dir={cfg.log.dir}: holds an earlier run ({len(previous)} checkpoint(s) or metrics, e.g. "
                   f"{previous[-1]}); continue it with --resume (--checkpoint.resume=true), or start in a new "
                   "--log.dir")


def check_resume(cfg: Config, out: Path, say: Callable[[str], None], is_main: bool) -> None:
    """The checkpoint resume will take, its config against this one, and metrics.jsonl cut back to it."""
    if not cfg.checkpoint.resume:
        return
    root = out / "checkpoints"
    found, skipped = ckpt.newest_intact(root)
    for line in skipped:
        say(f"resume: skipping damaged checkpoint {line}")
    if found is None:
        if skipped:
            raise ckpt.CheckpointError(f"resume: no intact checkpoint under {root} ({'; '.join(skipped)})")
        return  # nothing saved yet: the trainer starts fresh and says so
    step, path = found
    saved = ckpt.saved_config(path)
    if saved is None:
        say(f"resume: warning: {path} was written before checkpoints recorded their config; the current config "
            "could not be compared with the one it was trained with")
    else:
        for change in compare(saved, cfg.to_dict(), Config().to_dict()):
            say(f"resume: applying a changed setting: {change}")
    if is_main:
        dropped = truncate_metrics(out / "metrics.jsonl", step)
        if dropped:
            say(f"resume: dropped {dropped} metrics.jsonl line(s) past step {step} (they are trained again)")


def _gemini_api_version() -> str:
    """The API version google-genai (3.x) puts after the base URL: its env override, else 'v1'."""
    chosen = os.environ.get("GOOGLE_GENAI_API_VERSION", "")
    return "v1beta" if chosen == "beta" else chosen or "v1"


def check_teacher(cfg: Config) -> None:
    """An API teacher's address answers: a model listing (free) with a short timeout."""
    t = cfg.teacher
    if t.kind not in DEFAULT_URLS:
        return
    base = (t.base_url or DEFAULT_URLS[t.kind]).rstrip("/")
    parsed = urllib.parse.urlparse(base)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise RunFault(f"teacher.base_url={t.base_url!r}: not an http(s) URL")
    if t.kind == "anthropic" and not base.endswith("/v1"):
        base += "/v1"
    key = os.environ.get(t.api_key_env, "") if t.api_key_env else ""
    if t.kind == "anthropic":
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    elif t.kind == "gemini":
        headers = {"x-goog-api-key": key} if key else {}
    else:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{base}/{_gemini_api_version()}/models" if t.kind == "gemini" else f"{base}/models"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=TEACHER_CHECK_TIMEOUT_S) as reply:
            listing = reply.read(1 << 20)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            which = f"the key in ${t.api_key_env}" if key else f"a request without a key (${t.api_key_env} is not set)"
            raise RunFault(f"teacher.base_url={base}: the server refused {which} (HTTP {e.code})") from e
        return  # it answers; no listing offered (404) or not to us: the first request will tell
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RunFault(f"teacher.base_url={base}: no answer within {TEACHER_CHECK_TIMEOUT_S:.0f} s ({reason})") from e
    if t.kind != "openai":
        return
    try:
        served = [m["id"] for m in json.loads(listing)["data"]]
    except (ValueError, KeyError, TypeError):
        return  # a proxy with its own listing format: nothing to compare
    if served and t.model not in served:
        raise RunFault(f"teacher.model={t.model!r}: {url} serves {', '.join(served[:5])}, not this model")


def preflight(cfg: Config, *, rank: int, say: Callable[[str], None]) -> RunLock | None:
    """All checks, in the order a user would fix them; returns the run folder's lock (rank 0), held until
    released. Under torchrun every rank checks its inputs, and only rank 0 locks and writes."""
    out = check_log_dir(cfg)
    lock = None
    if rank == 0:
        lock = RunLock(out).acquire()
        if lock.notice:
            say(lock.notice)
    try:
        check_data(cfg)
        check_export(cfg, out)
        check_fresh_start(cfg, out, say, is_main=rank == 0)
        check_resume(cfg, out, say, is_main=rank == 0)
        check_completion_mode(cfg)
        check_teacher(cfg)
        check_models(cfg)
        check_task_match(cfg, say)
        check_teacher_cache(cfg, rank)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock
