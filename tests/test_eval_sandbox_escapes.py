"""Sandbox escapes (issue 16), each tried against a harmless target this test creates: a temporary
file, folder, socket or `sleep` process of its own.

Each escape is tried with every layer on (it must fail) and, where a kernel layer is what stops it,
with only that layer on (it must still fail) and with no layer at all (it must succeed: proof the
test can fail, and that the escape is real). On main every "all layers" case here succeeded: the
guards were an audit hook in module globals, and the only kernel layer was a network namespace.
"""

import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from omniopd.eval import sandbox
from omniopd.eval.sandbox import ALL_LAYERS, IsolationError, SandboxLimits, isolation_available, run_python

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or any(v != "on" for v in isolation_available().values()),
                                reason="needs root and every kernel layer (namespaces, Landlock ABI >= 6)")

LIMITS = SandboxLimits(cpu_s=2, wall_s=30, memory_mb=256, output_bytes=64 << 10, disk_mb=1, processes=16)
KERNEL = frozenset(ALL_LAYERS - {"guards"})
NONE: frozenset[str] = frozenset()


def run(code: str, layers, stdin: str = ""):
    return run_python(code, stdin, replace(LIMITS, layers=frozenset(layers)))


@pytest.fixture
def open_dir():
    """A temporary folder every uid may enter and write (so only the sandbox can stop a write there)."""
    path = Path(tempfile.mkdtemp(prefix="omniopd-escape-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


# A program that switches the guards off from inside: find the audit hook through the garbage
# collector and set its re-entrancy flag, as a hostile program could. Then try the escape.
UNGUARD = """
import gc
for f in gc.get_objects():
    if type(f).__name__ == 'function' and f.__name__ == 'hook' and 'sandbox' in f.__code__.co_filename:
        cells = dict(zip(f.__code__.co_freevars, f.__closure__))
        cells['busy'].cell_contents[0] = True
        print('guards off')
"""


def test_guards_switched_off_from_inside_do_not_open_the_filesystem(open_dir):
    target = open_dir / "escaped.txt"
    code = UNGUARD + f"open({str(target)!r}, 'w').write('x')\nprint('wrote')"
    r = run(code, ALL_LAYERS)
    assert "guards off" in r.stdout and "wrote" not in r.stdout and not target.exists(), r
    r = run(code, {"landlock", "guards"})  # Landlock alone holds the line
    assert "guards off" in r.stdout and "PermissionError" in r.stderr and not target.exists(), r
    r = run(code, {"guards"})  # only the (switched-off) guards: the write goes through
    assert "guards off" in r.stdout and target.read_text() == "x", r


def test_dir_fd_write_and_delete_outside(open_dir):
    victim = open_dir / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)
    code = (f"import os\nfd = os.open({str(open_dir)!r}, os.O_RDONLY)\n"
            "os.close(os.open('escaped.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n"
            "os.unlink('victim.txt', dir_fd=fd)\nprint('escaped')")
    for layers in (ALL_LAYERS, {"landlock", "guards"}, {"namespaces", "mounts", "guards"}):
        r = run(code, layers)
        assert "escaped" not in r.stdout and not (open_dir / "escaped.txt").exists(), (layers, r)
        assert victim.read_text() == "keep me", layers
    r = run(code, {"guards"})  # the audit hook alone checks the name against its own folder: fooled
    assert "escaped" in r.stdout and not victim.exists() and (open_dir / "escaped.txt").exists(), r


def test_sqlite_creates_no_file_outside(open_dir):
    db = open_dir / "x.db"
    code = f"import sqlite3\nsqlite3.connect({str(db)!r}).execute('create table t (x)')\nprint('created')"
    for layers in (ALL_LAYERS, KERNEL, {"landlock"}):
        r = run(code, layers)
        assert "created" not in r.stdout and not db.exists(), (layers, r)
    r = run(code, NONE)
    assert "created" in r.stdout and db.exists(), r


def test_no_shell_through_an_unaudited_entry_point(open_dir):
    target = open_dir / "from_shell.txt"
    # The guards switched off from inside stand for any entry point the audit hook does not see.
    code = UNGUARD + f"import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo pwned > {target}'])\nprint('spawned')"
    for layers in (ALL_LAYERS, {"landlock"}):  # Landlock: no exec anywhere
        r = run(code, layers)
        assert "spawned" not in r.stdout and "PermissionError" in r.stderr and not target.exists(), (layers, r)
    r = run(code, NONE)
    assert "spawned" in r.stdout and target.read_text().strip() == "pwned", r


@pytest.fixture
def victim_process():
    """A `sleep` of this test's own, standing in for the grader."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_no_signal_to_the_grader_through_pidfd(victim_process):
    code = (f"import os, signal\nfd = os.pidfd_open({victim_process.pid})\n"
            "signal.pidfd_send_signal(fd, signal.SIGKILL)\nprint('signalled')")
    for layers in (ALL_LAYERS, {"landlock"}, {"namespaces"}):
        r = run(code, layers)
        time.sleep(0.1)
        assert "signalled" not in r.stdout and victim_process.poll() is None, (layers, r)
    r = run(code, NONE)
    assert "signalled" in r.stdout and victim_process.wait(timeout=5) == -signal.SIGKILL, r


def _sandbox_processes() -> list[int]:
    """Host pids of processes running this worktree's sandbox boot (a program's leftovers)."""
    boot = str(Path(sandbox.__file__).with_name("_sandbox_boot.py")).encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if boot in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


ORPHAN = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(20)\n    os._exit(0)\n"
          "print('orphan started', flush=True)\n")


@pytest.mark.parametrize("ending", ["", "import time\ntime.sleep(60)\n"], ids=["exits", "killed_at_wall_limit"])
def test_no_process_survives_the_sandbox(ending):
    code = ORPHAN + ending
    for layers in (KERNEL, {"namespaces"}) if not ending else (KERNEL,):
        r = run_python(code, "", replace(LIMITS, layers=frozenset(layers), wall_s=2 if ending else 30))
        assert "orphan started" in r.stdout, (layers, r)
        assert _sandbox_processes() == [], (layers, r)
    r = run_python(code, "", replace(LIMITS, layers=NONE, wall_s=2 if ending else 30))
    survivors = _sandbox_processes()
    try:
        assert "orphan started" in r.stdout and len(survivors) == 1, (r, survivors)  # setsid() escaped the kill
    finally:
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def host_unix_socket():
    """A listening Unix socket that any uid may connect to, in a folder any uid may enter."""
    folder = Path(tempfile.mkdtemp(prefix="omniopd-sock-", dir="/tmp"))
    folder.chmod(0o755)
    path = folder / "host.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    path.chmod(0o777)
    server.listen()
    server.settimeout(0.2)
    yield server, path
    server.close()
    path.unlink()
    folder.rmdir()


UNIX_CONNECT = "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({addr!r})\nprint('connected')"


def test_no_host_unix_socket(host_unix_socket):
    server, path = host_unix_socket
    code = UNIX_CONNECT.format(addr=str(path))
    for layers in (KERNEL, {"namespaces", "mounts"}):  # out of sight under the covering tmpfs
        r = run(code, layers)
        assert "connected" not in r.stdout and "FileNotFoundError" in r.stderr, (layers, r)
    r = run(code, NONE)
    assert "connected" in r.stdout, r
    server.accept()[0].close()


def test_no_abstract_unix_socket():
    name = f"\0omniopd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(name)
        server.listen()
        code = UNIX_CONNECT.format(addr=name)
        for layers in (KERNEL, {"landlock"}, {"namespaces"}):  # Landlock's scope; the network namespace
            r = run(code, layers)
            assert "connected" not in r.stdout, (layers, r)
        r = run(code, NONE)
        assert "connected" in r.stdout, r


def test_no_tcp(open_dir):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 2)\nprint('connected')"
        for layers in (KERNEL, {"landlock"}, {"namespaces"}):
            r = run(code, layers)
            assert "connected" not in r.stdout, (layers, r)
        r = run(code, NONE)
        assert "connected" in r.stdout, r


def test_grader_environment_is_out_of_reach(monkeypatch):
    secret = f"sk-test-{time.monotonic_ns()}"  # a fake key
    monkeypatch.setenv("OMNIOPD_TEST_API_KEY", secret)  # in this (grading) process's environment
    with subprocess.Popen(["sleep", "60"]) as grader:  # and in a process of ours standing in for a grader
        try:
            code = (f"import os\nprint('own:', os.environ.get('OMNIOPD_TEST_API_KEY'))\n"
                    f"print('grader:', open('/proc/{grader.pid}/environ', 'rb').read())")
            for layers in (ALL_LAYERS, KERNEL, {"namespaces", "mounts"}):  # private /proc: no grader in it
                r = run(code, layers)
                assert "own: None" in r.stdout and secret not in r.stdout + r.stderr, (layers, r)
            r = run(code, NONE)  # the environment is always scrubbed; without the PID namespace /proc tells
            assert "own: None" in r.stdout and secret in r.stdout, r
        finally:
            grader.kill()


def test_process_count_is_limited():
    code = ("import os, time\nn = 0\ntry:\n    for _ in range(100):\n        if os.fork() == 0:\n"
            "            time.sleep(5)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n"
            "    print('refused', e.errno)\nprint('forked', n)")
    r = run(code, KERNEL)
    assert "refused 11" in r.stdout, r  # EAGAIN
    assert int(r.stdout.split("forked")[1]) < LIMITS.processes, r
    assert _sandbox_processes() == []


def test_total_disk_is_limited():
    # Each file is under the per-file limit (RLIMIT_FSIZE, 64 KiB here); together they pass 1 MiB.
    code = ("import errno\ntotal = 0\ntry:\n    for i in range(100):\n        with open(f'f{i}', 'wb') as f:\n"
            "            f.write(b'x' * 60000)\n        total += 60000\nexcept OSError as e:\n"
            "    print('refused', errno.errorcode[e.errno])\nprint('total', total)")
    r = run(code, KERNEL)
    assert "refused ENOSPC" in r.stdout, r
    assert int(r.stdout.split("total")[1]) <= LIMITS.disk_mb << 20, r


def test_runs_as_an_unprivileged_uid_of_its_own():
    r = run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())", ALL_LAYERS)
    uid, gid = r.stdout.split()[:2]
    assert int(uid) >= 1 << 30 and int(gid) == 65534 and r.stdout.split()[2] == "[]", r
    assert r.isolation == {name: "on" for name in ALL_LAYERS}, r.isolation
    assert r.missing_layers == []


def test_missing_layer_is_reported_and_require_isolation_refuses(monkeypatch):
    # A host without util-linux's `unshare`, for real: PATH without it.
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox._unshare_prefix.cache_clear()
    try:
        r = run_python("print('ran')", "", LIMITS)
        assert r.stdout == "ran\n", r
        assert r.isolation["namespaces"].startswith("unavailable: no `unshare`"), r.isolation
        assert r.isolation["mounts"] == "unavailable: needs namespaces"
        assert r.isolation["landlock"] == "on"
        assert {"namespaces", "mounts"} <= set(r.missing_layers)
        with pytest.raises(IsolationError, match="namespaces"):
            run_python("print('ran')", "", replace(LIMITS, require_isolation=True))
    finally:
        sandbox._unshare_prefix.cache_clear()
    assert stat.S_ISDIR(os.stat("/tmp").st_mode)  # and nothing was ever mounted over the host's /tmp
