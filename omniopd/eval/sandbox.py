"""Run an untrusted Python program under isolation the kernel enforces, with time/memory/output/disk limits.

Layers (names as reported in `RunResult.isolation`; `_sandbox_boot.py` applies them):
- "namespaces": fresh PID, network, IPC, UTS and mount namespaces (`unshare`; `-r` adds a user namespace
  when the grader is not root). The boot is PID 1: when it exits or is killed, the kernel kills every
  process the program started, `setsid()` or not. No network interface but a down loopback.
- "mounts": /tmp, /var/tmp, /run, /dev/shm, /root, /home and the grader's home are covered with empty
  tmpfs (no host Unix socket, no grader file there is reachable); the program's folder is a tmpfs of
  `disk_mb` (the total-disk limit); the Python installation is bound back read-only.
- "user": the program runs as an unprivileged uid of its own (no account; group nogroup), when the
  grader is root; a grader that is not root is already unprivileged and the program keeps its uid.
- "landlock": read-only filesystem except its folder, no exec, no TCP bind/connect, no signals or
  abstract Unix sockets outside its domain (Landlock ABI >= 6).
- "process_limit": RLIMIT_NPROC `processes` (needs "user": the count is per uid).
- "guards": an in-process audit hook (a second layer against accidents, not a boundary).
Always: a scrubbed environment (no variable of the grader's), rlimits on CPU seconds, address space,
file size (caps stdout/stderr) and core dumps, a wall-clock limit killing the whole process tree.
A layer this host cannot provide is reported, not silently dropped; `require_isolation` refuses to run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

_BOOT = Path(__file__).with_name("_sandbox_boot.py")
MEMORY_EXIT = 86  # keep equal to _sandbox_boot.MEMORY_EXIT
SETUP_FAILED_EXIT = 125  # the boot could not apply a layer it was asked for

Status = Literal["ok", "runtime_error", "timeout", "memory_limit", "output_limit", "isolation_error"]
KERNEL_LAYERS = ("namespaces", "mounts", "user", "landlock", "process_limit")
ALL_LAYERS = frozenset((*KERNEL_LAYERS, "guards"))
_DEPENDS = {"mounts": "namespaces", "process_limit": "user"}
_UNSHARE_FLAGS = ["--pid", "--fork", "--kill-child=SIGKILL", "--net", "--ipc", "--uts", "--mount", "--mount-proc"]


class IsolationError(RuntimeError):
    """A sandbox layer was required but this host cannot provide it."""


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: float = 4.0
    """CPU seconds (RLIMIT_CPU; rounded up to whole seconds)."""
    wall_s: float = 10.0
    """Wall-clock seconds before the process tree is killed (catches sleeping/blocked programs)."""
    memory_mb: int = 512
    """Address-space limit (RLIMIT_AS) in MiB; the interpreter itself needs about 30."""
    output_bytes: int = 1 << 20
    """Cap on stdout, on stderr and on any single file the program writes (RLIMIT_FSIZE)."""
    disk_mb: int = 64
    """Total size of everything the program writes in its folder (a tmpfs; layer "mounts")."""
    processes: int = 32
    """Processes and threads the program may have at once (RLIMIT_NPROC; layer "process_limit")."""
    layers: frozenset[str] = ALL_LAYERS
    """Layers to apply (tests switch single ones off to show what each one stops)."""
    require_isolation: bool = False
    """Refuse to run (IsolationError) when a kernel layer in `layers` is unavailable on this host."""


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
    isolation: dict[str, str] = field(default_factory=dict, compare=False)
    """Each layer: "on", "off" (not asked for), "unavailable: why" or "failed: why"."""

    @property
    def missing_layers(self) -> list[str]:
        """Kernel layers that did not apply (asked for or not)."""
        return [name for name in KERNEL_LAYERS if self.isolation.get(name) != "on"]


@functools.cache
def _unshare_prefix() -> tuple[list[str] | None, str]:
    """The `unshare` command that creates the namespaces here, or None and why not."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None, "no `unshare` (util-linux) on PATH"
    cmd = [unshare, *([] if os.geteuid() == 0 else ["--map-root-user"]), *_UNSHARE_FLAGS]
    try:
        probe = subprocess.run([*cmd, "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"`unshare` failed: {e}"
    if probe.returncode != 0:
        return None, "`unshare` refused: " + probe.stderr.decode(errors="replace").strip()[:200]
    return cmd, ""


@functools.cache
def _landlock_abi() -> tuple[int, str]:
    try:
        from landlock import landlock_abi_version

        return int(landlock_abi_version()), ""
    except ImportError:
        return 0, "the PyPI package `landlock` is not installed"
    except OSError as e:  # SyscallError: no Landlock in this kernel, or disabled at boot
        return 0, f"Landlock is not available: {e}"


def isolation_available() -> dict[str, str]:
    """What this host can provide, per kernel layer: "on" or "unavailable: why"."""
    report: dict[str, str] = {}
    cmd, why = _unshare_prefix()
    report["namespaces"] = "on" if cmd else f"unavailable: {why}"
    report["mounts"] = "on" if cmd else "unavailable: needs namespaces"
    report["user"] = "on"  # root drops to its own uid; any other grader is already unprivileged
    report["process_limit"] = "on" if os.geteuid() == 0 else (
        "unavailable: RLIMIT_NPROC counts per uid, and a grader that is not root cannot give the program its own")
    abi, why = _landlock_abi()
    report["landlock"] = "on" if abi >= 6 else f"unavailable: {why or f'Landlock ABI {abi} < 6 (scopes)'}"
    return report


def network_namespace_available() -> bool:
    """Can this process create the sandbox's namespaces (network included)?"""
    return _unshare_prefix()[0] is not None


def _unreadable_ancestor(path: str) -> str | None:
    """The first folder on the way to `path` that other users cannot enter, else None."""
    current = Path(path).resolve()
    for folder in [*reversed(current.parents), current]:
        if not os.stat(folder).st_mode & 0o001:
            return str(folder)
    return None


def isolation_plan(limits: SandboxLimits = DEFAULT_LIMITS) -> dict[str, str]:
    """Per layer: "on" (will be applied), "off" (not asked for), or "unavailable: why".

    Raises IsolationError when `limits.require_isolation` and an asked-for kernel layer is unavailable."""
    available = isolation_available()
    plan: dict[str, str] = {}
    for name in (*KERNEL_LAYERS, "guards"):
        if name not in limits.layers:
            plan[name] = "off"
        elif name in available and available[name] != "on":
            plan[name] = available[name]
        elif name in _DEPENDS and plan.get(_DEPENDS[name]) != "on":
            plan[name] = f"unavailable: needs {_DEPENDS[name]}"
        else:
            plan[name] = "on"
    if plan["user"] == "on" and plan["mounts"] != "on" and os.geteuid() == 0:
        hidden = _unreadable_ancestor(sys.base_prefix) or _unreadable_ancestor(sys.prefix)
        if hidden:  # without "mounts" to bind it back, another uid could not even import the stdlib
            plan["user"] = f"unavailable: {hidden} is closed to other users and mounts are unavailable"
            plan["process_limit"] = "unavailable: needs user"
    missing = [f"{name} ({plan[name]})" for name in KERNEL_LAYERS
               if name in limits.layers and plan[name] != "on"]
    if limits.require_isolation and missing:
        raise IsolationError("sandbox isolation required but unavailable on this host: " + "; ".join(missing))
    return plan


def _read_capped(path: Path, cap: int) -> str:
    with open(path, "rb") as f:
        return f.read(cap).decode("utf-8", errors="replace")


def _scrubbed_env(folder: str) -> dict[str, str]:
    """The program's whole environment: nothing of the grader's (API keys live there)."""
    return {"PATH": "/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run_python(code: str, stdin: str = "", limits: SandboxLimits = DEFAULT_LIMITS, *,
               fn_name: str | None = None, args: list | None = None) -> RunResult:
    """Run `code` with `stdin`; with `fn_name`, call that function with `args` instead of `__main__`."""
    plan = isolation_plan(limits)
    work = Path(tempfile.mkdtemp(prefix="omniopd-sandbox-"))
    try:
        root = work / "root"  # the program's folder without "mounts"; its I/O files sit beside it
        root.mkdir()
        (work / "solution.py").write_text(code)
        (work / "stdin").write_text(stdin)
        layers = [name for name, state in plan.items() if state == "on"]
        if os.geteuid() != 0 and "user" in layers:
            layers.remove("user")  # nothing to drop; reported as on (the grader's own unprivileged uid)
        cfg = {"root": str(root), "program": str(work / "solution.py"), "result": str(work / "result.json"),
               "status": str(work / "status.json"), "cpu_s": limits.cpu_s, "memory_bytes": limits.memory_mb << 20,
               "fsize_bytes": limits.output_bytes, "disk_bytes": limits.disk_mb << 20,
               "processes": limits.processes, "layers": layers, "require_isolation": limits.require_isolation,
               "uid": 0x40000000 + secrets.randbelow(0x3FFFFFFF),  # a uid of its own: no account, no files
               "grader_home": os.path.expanduser("~"),
               "call": {"fn_name": fn_name, "args": list(args or [])} if fn_name else None}
        (work / "config.json").write_text(json.dumps(cfg))
        cmd = [sys.executable, "-I", "-B", str(_BOOT), str(work / "config.json")]
        if "namespaces" in layers:
            cmd = [*_unshare_prefix()[0], *cmd]
        with open(work / "stdin", "rb") as fin, open(work / "stdout", "wb") as fout, \
                open(work / "stderr", "wb") as ferr:
            start = time.monotonic()
            proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=root,
                                    env=_scrubbed_env(str(root)), start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # The group: `unshare` (whose death SIGKILLs the namespace's PID 1, and with it every
                # process inside) and, without namespaces, whatever did not leave the group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            wall = time.monotonic() - start
        out = _read_capped(work / "stdout", limits.output_bytes)
        err = _read_capped(work / "stderr", limits.output_bytes)
        try:
            report = json.loads((work / "status.json").read_text())
        except (OSError, ValueError):
            report = {}
        isolation = {**plan, **report.get("layers", {})}
        rc = -report["signal"] if "signal" in report else report.get("exit", proc.returncode)
        over = max((work / name).stat().st_size for name in ("stdout", "stderr")) >= limits.output_bytes
        if rc == SETUP_FAILED_EXIT and ("sandbox: could not set up isolation" in err or report.get("refused")):
            status: Status = "isolation_error"
        elif timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):
            status = "timeout"
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
        return RunResult(status, rc, out, err, wall, result, isolation)
    finally:
        shutil.rmtree(work, ignore_errors=True)
