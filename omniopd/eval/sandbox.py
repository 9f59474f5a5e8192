"""Run an untrusted Python program: own process group, time/memory/output limits, no network.

Layers (see `_sandbox_boot.py` for the in-process part):
- a separate `python -I -B` process in its own session, killed as a group at the wall-clock limit;
- rlimits: CPU seconds (SIGXCPU), address space (MemoryError), file size (caps stdout/stderr too,
  since both go to files), no core dumps;
- a new network namespace (`unshare -rn`, when the kernel allows unprivileged user namespaces), so
  there is no interface but a down loopback; plus an audit hook refusing socket creation either way;
- a fresh temporary working folder, removed afterwards; writes outside it are refused.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

_BOOT = Path(__file__).with_name("_sandbox_boot.py")
MEMORY_EXIT = 86  # keep equal to _sandbox_boot.MEMORY_EXIT

Status = Literal["ok", "runtime_error", "timeout", "memory_limit", "output_limit"]


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: float = 4.0
    """CPU seconds (RLIMIT_CPU; rounded up to whole seconds)."""
    wall_s: float = 10.0
    """Wall-clock seconds before the process group is killed (catches sleeping/blocked programs)."""
    memory_mb: int = 512
    """Address-space limit (RLIMIT_AS) in MiB; the interpreter itself needs about 30."""
    output_bytes: int = 1 << 20
    """Cap on stdout, on stderr and on any file the program writes (RLIMIT_FSIZE)."""
    network_namespace: bool = True
    """Run inside `unshare -rn` when available (a network namespace without interfaces)."""
    guards: bool = True
    """Install the audit-hook guards (off only to test the OS layers on their own)."""


DEFAULT_LIMITS = SandboxLimits()


@dataclass(frozen=True)
class RunResult:
    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    result: Any = None
    """Function-call runs: the function's return value (JSON round-tripped); None otherwise."""


@functools.cache
def network_namespace_available() -> bool:
    """Can this process create an unprivileged user + network namespace (`unshare -rn`)?"""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _read_capped(path: Path, cap: int) -> str:
    with open(path, "rb") as f:
        return f.read(cap).decode("utf-8", errors="replace")


def run_python(code: str, stdin: str = "", limits: SandboxLimits = DEFAULT_LIMITS, *,
               fn_name: str | None = None, args: list | None = None) -> RunResult:
    """Run `code` with `stdin`; with `fn_name`, call that function with `args` instead of `__main__`."""
    work = Path(tempfile.mkdtemp(prefix="omniopd-sandbox-"))
    try:
        root = work / "root"  # the program's folder; its I/O files sit beside it, outside its reach
        root.mkdir()
        (work / "solution.py").write_text(code)
        (work / "stdin").write_text(stdin)
        cfg = {"root": str(root), "program": str(work / "solution.py"), "result": str(work / "result.json"),
               "cpu_s": limits.cpu_s, "memory_bytes": limits.memory_mb << 20,
               "fsize_bytes": limits.output_bytes, "guards": limits.guards,
               "call": {"fn_name": fn_name, "args": list(args or [])} if fn_name else None}
        (work / "config.json").write_text(json.dumps(cfg))
        cmd = [sys.executable, "-I", "-B", str(_BOOT), str(work / "config.json")]
        if limits.network_namespace and network_namespace_available():
            cmd = [shutil.which("unshare") or "unshare", "-rn", *cmd]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "TMPDIR": str(root), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        with open(work / "stdin", "rb") as fin, open(work / "stdout", "wb") as fout, \
                open(work / "stderr", "wb") as ferr:
            start = time.monotonic()
            proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=root, env=env,
                                    start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                with contextlib.suppress(ProcessLookupError):  # the group: whatever it started dies too
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            wall = time.monotonic() - start
        out = _read_capped(work / "stdout", limits.output_bytes)
        err = _read_capped(work / "stderr", limits.output_bytes)
        rc = proc.returncode
        over = max((work / name).stat().st_size for name in ("stdout", "stderr")) >= limits.output_bytes
        if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):
            status: Status = "timeout"
        elif rc == MEMORY_EXIT or (rc != 0 and "MemoryError" in err):
            status = "memory_limit"
        elif over:
            status = "output_limit"
        elif rc != 0:
            status = "runtime_error"
        else:
            status = "ok"
        result = None
        if fn_name and status == "ok":
            try:
                result = json.loads((work / "result.json").read_text())["result"]
            except (OSError, ValueError, KeyError):
                status = "runtime_error"  # exited 0 without a result (e.g. sys.exit in the function)
        return RunResult(status, rc, out, err, wall, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
