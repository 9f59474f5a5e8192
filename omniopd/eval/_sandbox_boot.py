"""First code run for a sandboxed program (`python -I -B _sandbox_boot.py CONFIG.json`), as root or the grader.

When the "namespaces" layer is on, this process is PID 1 of fresh PID, network, IPC, UTS and mount
namespaces (made by `unshare`, see `sandbox.py`). It then:
1. reads the program, and opens the result and status files, while the grader's folder is still visible;
2. "mounts": covers /tmp, /var/tmp, /run, /dev/shm, /root, /home and the grader's home with empty
   tmpfs (so host Unix sockets, the grader's folder and home are out of sight), mounts the program's
   folder as a tmpfs of `disk_bytes` at /tmp, and binds the Python installation back read-only;
3. forks the program's process, which sets rlimits (CPU, memory, file size, process count, no core),
   drops to an unprivileged uid ("user"), restricts itself with Landlock ("landlock": read-only
   filesystem, writes only in its folder, no exec, no TCP, no signals or abstract sockets outside its
   domain), installs the audit-hook guards ("guards") and runs the candidate;
4. waits for it and writes its exit status and the layers actually applied to the status file, then
   exits: as PID 1 its exit makes the kernel kill every process left in the namespace.
Each layer that cannot be applied is recorded (never silently skipped); the grader decides whether
that is acceptable (`SandboxLimits.require_isolation`).
"""

import contextlib
import io
import json
import os
import resource
import sys
import types

MEMORY_EXIT = 86  # exit status that tells the parent "MemoryError"
NOGROUP = 65534
HIDDEN_DIRS = ("/tmp", "/var/tmp", "/run", "/dev/shm", "/root", "/home")
SANDBOX_DIR = "/tmp"  # the program's folder when "mounts" is on (a fresh tmpfs)


# ---- mounts (PID 1, root in its own mount namespace) -----------------------------------------------------

def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    return libc, ctypes


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    libc, ctypes = _libc()
    enc = (lambda s: None if s is None else s.encode())
    if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src or fstype} on {target}: {os.strerror(err)}")


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _set_up_mounts(cfg: dict) -> str:
    """Hide the host's shared and private folders, give the program a size-limited tmpfs, and bind back
    what the interpreter needs to read. Returns the program's folder."""
    hidden = [d for d in dict.fromkeys([*HIDDEN_DIRS, cfg.get("grader_home") or "/root"])
              if d != "/" and os.path.isdir(d) and not os.path.islink(d)]
    needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix, *sys.path)
                     if p and os.path.exists(p)})
    needed = [p for p in needed if any(_under(p, h) for h in hidden)]
    needed = [p for i, p in enumerate(needed) if not any(_under(p, q) for q in needed[:i])]  # outermost only
    keep = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p in needed}  # reachable after their parent is covered
    uid = cfg["uid"] if "user" in cfg["layers"] else os.getuid()
    gid = NOGROUP if "user" in cfg["layers"] else os.getgid()
    inodes = max(64, cfg["disk_bytes"] // 4096)
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing below propagates back to the host
    for d in sorted(hidden, key=len):
        if d != SANDBOX_DIR:
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=256,mode=0755")
    # The program's folder covers its hidden dir before anything is bound back, so an interpreter that lives
    # below it (a clone under /tmp, say) is bound into the program's folder, read-only, not hidden by it.
    _mount("tmpfs", SANDBOX_DIR, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['disk_bytes']},nr_inodes={inodes},mode=0700,uid={uid},gid={gid}")
    for path, fd in keep.items():
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
        # read-only is Landlock's job too; a locked mount flag may refuse the remount in a user namespace
        with contextlib.suppress(OSError):
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
        os.close(fd)
    return SANDBOX_DIR


# ---- the program's own process ---------------------------------------------------------------------------

def _set_limits(cfg: dict) -> None:
    cpu = max(1, int(-(-cfg["cpu_s"] // 1)))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at `cpu`, SIGKILL a second later
    for kind, value in ((resource.RLIMIT_AS, cfg["memory_bytes"]), (resource.RLIMIT_FSIZE, cfg["fsize_bytes"]),
                        (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(kind, (value, value))
    if "process_limit" in cfg["layers"]:
        # Counted per real uid: meaningful because "user" gives each run a uid of its own.
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["processes"], cfg["processes"]))


def _drop_user(cfg: dict) -> None:
    os.setgroups([])
    os.setresgid(NOGROUP, NOGROUP, NOGROUP)
    os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    if os.getuid() == 0 or os.geteuid() == 0:
        raise RuntimeError("still root after setresuid")


def _landlock(folder: str) -> None:
    """Read-only filesystem (no exec anywhere), read-write `folder`, no TCP bind/connect, and no signals or
    abstract Unix sockets across the domain boundary (ABI >= 6), via the PyPI `landlock` binding."""
    import ctypes

    from landlock.plumbing import (
        PR_SET_NO_NEW_PRIVS,
        FSAccess,
        PathBeneathAttr,
        RulesetAttr,
        get_add_rule,
        get_create_ruleset,
        get_prctl,
        get_restrict_self,
    )

    class RulesetAttrV6(RulesetAttr):  # the binding's struct has only the filesystem field
        _fields_ = [("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    net_bind_tcp, net_connect_tcp, scope_abstract_unix, scope_signal = 1, 2, 1, 2

    def call(fn, *args):
        ctypes.set_errno(0)  # the binding reads errno to detect failure: clear any stale value first
        return fn(*args)

    handled = FSAccess.all()
    attr = RulesetAttrV6(handled, net_bind_tcp | net_connect_tcp, scope_abstract_unix | scope_signal)
    ruleset = call(get_create_ruleset(), ctypes.byref(attr), ctypes.sizeof(attr), 0)
    read = FSAccess.READ_FILE | FSAccess.READ_DIR
    for path, rights in (("/", read), (folder, handled & ~FSAccess.EXECUTE),
                         ("/dev/null", FSAccess.READ_FILE | FSAccess.WRITE_FILE)):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            call(get_add_rule(), ruleset, 1, ctypes.byref(PathBeneathAttr(rights & handled, fd)), 0)
        finally:
            os.close(fd)
    call(get_prctl(), PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    call(get_restrict_self(), ruleset, 0)
    os.close(ruleset)


_PATH_EVENTS = {  # audit event -> indexes of its path arguments that must stay inside the folder
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.mkfifo": (0,), "os.mknod": (0,), "os.removexattr": (0,),
    "os.setxattr": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.move": (1,),
}
_REFUSED_EVENTS = frozenset({
    "socket.__new__", "socket.getaddrinfo", "socket.gethostbyname", "socket.connect", "socket.bind",
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen", "ctypes.dlsym",
    "ctypes.cdata", "ctypes.call_function", "os.startfile", "webbrowser.open", "sys.remote_exec",
    "sqlite3.connect", "os.setsid", "os.setpgid",
})
_REFUSED_MODULES = frozenset({"ctypes", "_ctypes", "cffi", "landlock"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_guards(root: str) -> None:
    """Second layer (accidents and naive attempts; the kernel layers are the boundary): an audit hook.
    Its tables are closure cells, not module globals the program could reach and clear."""
    realpath, sep, fspath = os.path.realpath, os.sep, os.fspath
    root = realpath(root)
    busy = [False]  # re-entrancy: realpath itself may raise audit events

    def inside(path) -> bool:
        if isinstance(path, bytes):
            path = path.decode(errors="surrogateescape")
        full = realpath(fspath(path))  # relative to the current folder, wherever it has moved
        return full == root or full.startswith(root + sep)

    refused, modules, path_events, write_flags = _REFUSED_EVENTS, _REFUSED_MODULES, dict(_PATH_EVENTS), _WRITE_FLAGS

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        if event in refused:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in modules:
            # ImportError, so that libraries with an optional ctypes dependency (numpy) still import
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        paths = ()
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags)
            paths = (path,) if writing and path is not None else ()
        elif event in path_events:
            paths = tuple(args[i] for i in path_events[event] if i < len(args))
        busy[0] = True
        try:
            # an int is an already open descriptor (`open(1, "w")` for fast output); a dir_fd-relative name
            # is checked against the current folder: only the kernel layers see the real target
            outside = [p for p in paths if p is not None and not isinstance(p, int) and not inside(p)]
        finally:
            busy[0] = False
        if outside:
            raise PermissionError(f"sandbox: writing outside the working folder is not allowed: {outside[0]}")

    sys.addaudithook(hook)


def _run(source: str, call: dict | None, result_file) -> None:
    code = compile(source, "solution.py", "exec")
    main = types.ModuleType("__main__")  # the candidate's own __main__, not this boot module
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    if call is None:
        exec(code, main.__dict__)
        return
    main.__name__ = "__candidate__"
    real_stdout, sys.stdout = sys.stdout, io.StringIO()  # the candidate's prints are not its answer
    try:
        exec(code, main.__dict__)
        fn = main.__dict__.get(call["fn_name"])
        if fn is None and isinstance(main.__dict__.get("Solution"), type):  # LeetCode layout
            fn = getattr(main.__dict__["Solution"](), call["fn_name"], None)
        if fn is None:
            raise NameError(f"function {call['fn_name']!r} is not defined")
        result = fn(*call["args"])
    finally:
        sys.stdout = real_stdout
    if isinstance(result, tuple):
        result = list(result)
    result_file.write(json.dumps({"result": result}, default=repr))
    result_file.flush()


def _program(cfg: dict, folder: str, source: str, result_file) -> None:
    """The forked child: limits, user, Landlock, guards, then the candidate. Never returns."""
    try:
        os.chdir(folder)
        _set_limits(cfg)
        if "user" in cfg["layers"]:
            _drop_user(cfg)
        if "landlock" in cfg["layers"]:
            _landlock(folder)
        for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "landlock"))]:
            del sys.modules[name]  # what the boot imported is not handed to the candidate
        if "guards" in cfg["layers"]:
            _install_guards(folder)
    except BaseException as e:  # a layer that was promised but failed: refuse to run the program
        os.write(2, f"sandbox: could not set up isolation: {e!r}\n".encode())
        os._exit(125)
    try:
        _run(source, cfg.get("call"), result_file)
        sys.stdout.flush()
    except MemoryError:
        sys.stdout = sys.__stdout__
        os.write(2, b"MemoryError\n")
        os._exit(MEMORY_EXIT)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
        _flush_and_exit(code)
    except BaseException:
        import traceback

        traceback.print_exc()
        _flush_and_exit(1)
    _flush_and_exit(0)


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except MemoryError:
            os._exit(MEMORY_EXIT)
        except BaseException:  # noqa: S110 - a closed or broken stream: the exit status still counts
            pass
    os._exit(code)


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    with open(cfg["program"]) as f:
        source = f.read()
    result_file = open(cfg["result"], "w") if cfg.get("call") else None  # noqa: SIM115 - kept open
    status_fd = os.open(cfg["status"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    applied = {name: "on" for name in cfg["layers"] if name != "mounts"}
    if "namespaces" in cfg["layers"] and os.getpid() != 1:
        applied["namespaces"] = "failed: not PID 1 of a fresh PID namespace"
    folder = cfg["root"]
    if "mounts" in cfg["layers"] and os.getpid() != 1:  # never mount anything in the host's namespaces
        applied["mounts"] = "failed: not PID 1 of a fresh namespace"
    elif "mounts" in cfg["layers"]:
        try:
            folder = _set_up_mounts(cfg)
            applied["mounts"] = "on"
        except OSError as e:
            applied["mounts"] = f"failed: {e}"
    elif "user" in cfg["layers"]:  # the grader's folder: the program's uid must be able to reach it
        os.chown(folder, cfg["uid"], NOGROUP)
        os.chmod(os.path.dirname(folder), 0o711)
    if applied.get("mounts", "on") != "on" and cfg.get("require_isolation"):
        os.write(status_fd, json.dumps({"layers": applied, "refused": True}).encode())
        sys.exit(125)
    if "landlock" in cfg["layers"]:
        import ctypes  # noqa: F401 - imported while the interpreter's files are readable (before the uid drop)

        import landlock.plumbing  # noqa: F401
    os.environ.update(HOME=folder, TMPDIR=folder)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)
        _program(cfg, folder, source, result_file)
    _, status = os.waitpid(pid, 0)
    report = {"layers": applied}
    if os.WIFSIGNALED(status):
        report["signal"] = os.WTERMSIG(status)
    else:
        report["exit"] = os.WEXITSTATUS(status)
    os.write(status_fd, json.dumps(report).encode())
    os.close(status_fd)
    os._exit(0)  # as PID 1 of the namespace: every process the program left behind is killed now


if __name__ == "__main__":
    main()
