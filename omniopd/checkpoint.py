"""Save / resume with torch.distributed.checkpoint, keep the last K, export the student as an HF folder.

Layout under `<log.dir>/checkpoints/`: `step_000012/` holds the DCP shards of model + optimizer and
`trainer_state.pt` (step, scheduler, data position, per-rank RNG states). A checkpoint is written into
`step_000012.tmp/` and renamed once every rank has finished, so a run killed mid-save resumes from
the previous complete one.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

_STEP_DIR = re.compile(r"^step_(\d{6,})$")


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


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def save(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
         extra: dict[str, Any], keep: int) -> Path:
    """Collective: every rank calls it. `extra` is this rank's non-tensor state (RNG, data, scheduler)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(extra, tmp / f"trainer_state_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        (tmp / "world_size").write_text(str(world))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: restore model + optimizer in place, return this rank's `extra` state."""
    saved_world = int((path / "world_size").read_text())
    if saved_world != dist.get_world_size():
        raise RuntimeError(f"{path}: saved with {saved_world} ranks, resuming with {dist.get_world_size()}; "
                           "resume with the same world size")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return torch.load(path / f"trainer_state_rank{dist.get_rank()}.pt", weights_only=False)


def export_hf(full_state: dict[str, torch.Tensor], base_path: str, out: Path, tokenizer: Any) -> Path:
    """Write the trained student as an HF folder (safetensors) that transformers and vLLM load."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(full_state, assign=True, strict=False)
    model.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
