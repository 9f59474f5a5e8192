"""The torch-free part of checkpoints and export: what a complete checkpoint holds, how it is verified, which
one resume takes, and whether an export target is ours to replace. `preflight` uses it before torch loads;
`checkpoint` writes and reads the tensors.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from omniopd.faults import RunFault

_STEP_DIR = re.compile(r"^step_(\d{6,})$")
MANIFEST = "manifest.json"
CONFIG = "config.json"
SMALL_FILE = 1 << 20  # files up to this size get a checksum; the big shards are checked by size
EXPORT_MARKER = ".omniopd-export"


class CheckpointError(RunFault):
    """A checkpoint that cannot be written or read; the message names the path and the reason."""


class ExportTargetError(RunFault):
    """The export folder holds something this run did not write."""


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> dict[str, Any]:
    """Record every file of a finished checkpoint folder: its size, and a checksum when it is small."""
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        size = f.stat().st_size
        files[str(f.relative_to(folder))] = {"size": size, "sha256": _sha256(f) if size <= SMALL_FILE else None}
    manifest = {"version": 1, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify(folder: Path) -> str | None:
    """Why `folder` is not a usable checkpoint, or None. One without a manifest (written before manifests
    existed) is checked for its structure only."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        for needed in (".metadata", "world_size", "trainer_state_rank0.pt"):
            if not (folder / needed).is_file():
                return f"{needed} is missing"
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    for name, want in files.items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name} is {size} bytes, the manifest says {want['size']}"
        if want.get("sha256") and _sha256(f) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def newest_intact(root: Path) -> tuple[tuple[int, Path] | None, list[str]]:
    """The newest checkpoint that verifies, and one line per newer checkpoint skipped (path: reason)."""
    skipped = []
    for step, path in reversed(checkpoints(root)):
        problem = verify(path)
        if problem is None:
            return (step, path), skipped
        skipped.append(f"{path}: {problem}")
    return None, skipped


def saved_config(folder: Path) -> dict[str, Any] | None:
    """The full config a checkpoint was written by (None for a checkpoint older than that record)."""
    path = folder / CONFIG
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def export_problem(out: Path) -> str | None:
    """Why exporting into `out` would destroy something this project did not write, or None."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out} is a file, not an earlier export"
    marker = out / EXPORT_MARKER
    if not marker.is_file():
        return f"{out} exists and holds no {EXPORT_MARKER} marker of an earlier export"
    try:
        ours = set(json.loads(marker.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{marker} is unreadable"
    foreign = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                     if p.is_file() and p != marker and str(p.relative_to(out)) not in ours)
    if foreign:
        return f"{out} holds files an export did not write: {', '.join(foreign[:3])}"
    return None
