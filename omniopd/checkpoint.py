"""Save / resume with torch.distributed.checkpoint, keep the last K, export the student as an HF folder.

Layout under `<log.dir>/checkpoints/`: `step_000012/` holds the DCP shards of model + optimizer and
`trainer_state.pt` (step, scheduler, data position, per-rank RNG states). A checkpoint is written into
`step_000012.tmp/` and renamed once every rank has finished, so a run killed mid-save resumes from
the previous complete one.

Each complete checkpoint also holds `config.json` (the run's full config: what resume compares against)
and `manifest.json` (every file's size, and a SHA-256 of the small ones). A new checkpoint is verified
against its manifest before any older one is pruned; resume takes the newest one that verifies and says
which it skipped and why (`newest_intact`). A write failure (a full disk, a file-size limit) removes the
partial `.tmp` folder and is reported naming it, on every rank (one rank's failure is each rank's error, never a
peer left waiting at a barrier); the earlier checkpoints stay as they were.

The HF export goes to a temporary folder first and replaces `<log.dir>/export` only if that is absent or
holds nothing but an earlier export of ours (its `.omniopd-export` marker lists the files it wrote).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from omniopd import parallel
from omniopd.checkpoint_files import (
    CONFIG,
    EXPORT_MARKER,
    MANIFEST,
    CheckpointError,
    ExportTargetError,
    checkpoints,
    export_problem,
    newest_intact,
    saved_config,
    verify,
    write_manifest,
)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
         extra: dict[str, Any], keep: int, config: dict[str, Any] | None = None) -> Path:
    """Collective: every rank calls it, and every rank raises when any rank's part fails. `extra` is this rank's
    non-tensor state (RNG, data, scheduler); `config` the run's full config (`Config.to_dict()`), stored for
    resume to compare against."""
    rank, world = dist.get_rank(), dist.get_world_size()
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"

    def prepare() -> None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def seal() -> None:  # once every rank's files are written
        if rank == 0:
            (tmp / "world_size").write_text(str(world))
            if config is not None:
                (tmp / CONFIG).write_text(json.dumps(config, indent=1))
            write_manifest(tmp)
            _fsync_tree(tmp)  # on disk before the rename makes it a checkpoint: a power cut leaves no hollow one

    state: dict[str, Any] = {}

    def gather() -> None:  # before dcp.save's own collectives: a rank failing here must not strand the others
        state["model"], state["optim"] = get_state_dict(model, optimizer)

    try:
        parallel.every_rank(prepare)
        parallel.every_rank(gather)
        dcp.save(state, checkpoint_id=str(tmp))  # raises on every rank itself when one rank's write fails
        parallel.every_rank(lambda: torch.save(extra, tmp / f"trainer_state_rank{rank}.pt"))
        parallel.every_rank(seal)
    except BaseException as e:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # whatever failed, no partial folder stays behind
        if not (isinstance(e, parallel.PeerFailed) or _checkpoint_fault(e)):
            raise  # a bug of ours (or a stop) keeps its type and traceback
        reason = _reason(e)
        raise CheckpointError(f"{tmp}: writing the step-{step} checkpoint failed ({reason}); the partial folder "
                              "was removed and the earlier checkpoints are untouched") from e

    def publish() -> None:
        if rank != 0:
            return
        # The same step saved again (a resumed run re-reaching it): the earlier copy is set aside, not deleted,
        # until the new one verifies.
        aside = root / f"step_{step:06d}.old"
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
            final.rename(aside)
        tmp.rename(final)
        problem = verify(final)  # before anything older goes: never prune down to a bad checkpoint
        if problem is not None:
            if aside.exists():
                shutil.rmtree(final, ignore_errors=True)
                aside.rename(final)
            raise CheckpointError(f"{final}: the new checkpoint does not verify ({problem}); older ones kept")
        shutil.rmtree(aside, ignore_errors=True)
        _fsync_dir(root)  # the rename itself
        for _, old in checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    try:
        parallel.every_rank(publish)
    except OSError as e:  # rank 0: the rename or the pruning hit a file fault
        raise CheckpointError(f"{final}: putting the step-{step} checkpoint in place failed ({_reason(e)})") from e
    except parallel.PeerFailed as e:
        raise CheckpointError(f"{final}: rank 0 could not put the step-{step} checkpoint in place ({e})") from e
    return final


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for sub in [p for p in folder.rglob("*") if p.is_dir()] + [folder]:
        _fsync_dir(sub)


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: restore model + optimizer in place, return this rank's `extra` state."""
    saved_world = int((path / "world_size").read_text())
    if saved_world != dist.get_world_size():
        raise CheckpointError(f"{path}: saved with {saved_world} ranks, resuming with {dist.get_world_size()}; "
                              "resume with the same world size")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return torch.load(path / f"trainer_state_rank{dist.get_rank()}.pt", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, CheckpointException) as e:
        if not _checkpoint_fault(e):
            raise  # a bug of ours keeps its traceback
        # The manifest check runs before this; what still fails here is a checkpoint of another model (a
        # shape mismatch) or one damaged in a way sizes and checksums cannot see.
        raise CheckpointError(f"{path}: cannot restore this checkpoint ({_reason(e)})") from e


# What torch raises as a bare RuntimeError for a file it cannot write or read (a full disk, a truncated zip)
# and for a checkpoint of another model (a shape mismatch); any other RuntimeError is a bug of ours.
_FILE_FAULTS = ("inline_container", "PytorchStreamWriter", "PytorchStreamReader", "file write failed", "size mismatch",
                "Error(s) in loading state_dict")


def load_newest(root: Path, newest_step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                say: Any) -> tuple[int, Path, dict[str, Any], bool]:
    """`(step, path, extra, fell_back)` of the newest checkpoint at or below `newest_step` that verifies and
    loads: one that verifies yet fails to load is skipped (`say` names it) for the one before it."""
    failed = []
    for step, path in reversed(checkpoints(root)):
        if step > newest_step or verify(path) is not None:
            continue
        try:
            return step, path, load(path, model, optimizer), bool(failed)
        except CheckpointError as e:
            failed.append(str(e))
            say(f"resume: skipping checkpoint {e}")
    raise CheckpointError(f"resume: no checkpoint under {root} loads ({'; '.join(failed)})")


def _checkpoint_fault(e: BaseException) -> bool:
    if isinstance(e, OSError | EOFError | pickle.UnpicklingError | CheckpointException):
        return True
    return isinstance(e, RuntimeError) and any(text in str(e) for text in _FILE_FAULTS)


def _reason(e: BaseException) -> str:
    """One line for an I/O failure; DCP wraps each rank's in a CheckpointException whose text is tracebacks."""
    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def export_hf(full_state: dict[str, torch.Tensor], base_path: str, out: Path, tokenizer: Any,
              overwrite: bool = False) -> Path:
    """Write the trained student as an HF folder (safetensors) that transformers and vLLM load. It goes to a
    temporary folder beside `out` and replaces `out` only when `export_problem(out)` is None or `overwrite`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    problem = export_problem(out)
    if problem and not overwrite:
        raise ExportTargetError(f"{problem}: not replacing it (use --export.overwrite=true, or move it away)")
    config = AutoConfig.from_pretrained(base_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(full_state, assign=True, strict=False)
    model.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        (tmp / EXPORT_MARKER).write_text(json.dumps({"files": files}, indent=1))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".old", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["CONFIG", "EXPORT_MARKER", "MANIFEST", "CheckpointError", "ExportTargetError", "checkpoints", "export_hf",
           "export_problem", "load", "newest_intact", "rng_state", "save", "saved_config", "set_rng_state", "verify",
           "write_manifest"]
