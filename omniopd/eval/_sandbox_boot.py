"""First code run inside the sandbox process (`python -I -B _sandbox_boot.py CONFIG.json`).

It sets the resource limits, installs the guards (an audit hook that refuses writes outside the
working folder, sockets, new processes, ctypes and signals to other processes), then runs the
candidate program: as `__main__` (stdin/stdout tests) or by calling `fn_name(*args)` and writing the
return value as JSON to the result file (function-call tests).

The audit hook is a guard against accidents and naive attempts, not a security boundary on its own;
the kernel-enforced parts are the rlimits, the process group kill and the network namespace.
"""

import io
import json
import os
import resource
import sys

MEMORY_EXIT = 86  # exit status that tells the parent "MemoryError"


def _limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def _set_limits(cfg: dict) -> None:
    cpu = max(1, int(-(-cfg["cpu_s"] // 1)))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at `cpu`, SIGKILL a second later
    _limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    _limit(resource.RLIMIT_FSIZE, cfg["fsize_bytes"])
    _limit(resource.RLIMIT_CORE, 0)


_PATH_EVENTS = {  # audit event -> indexes of its path arguments that must stay inside the folder
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.mkfifo": (0,), "os.mknod": (0,), "os.removexattr": (0,),
    "os.setxattr": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.move": (1,),
}
_REFUSED_EVENTS = {
    "socket.__new__", "socket.getaddrinfo", "socket.gethostbyname", "socket.connect", "socket.bind",
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen", "ctypes.dlsym",
    "ctypes.cdata", "ctypes.call_function", "os.startfile", "webbrowser.open", "sys.remote_exec",
}
_REFUSED_MODULES = {"ctypes", "_ctypes", "cffi"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_guards(root: str) -> None:
    realpath, sep = os.path.realpath, os.sep
    root = realpath(root)
    busy = [False]  # re-entrancy: realpath itself may raise audit events

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        if isinstance(path, bytes):
            path = path.decode(errors="surrogateescape")
        full = realpath(os.fspath(path))  # relative to the current folder, wherever it has moved
        return full == root or full.startswith(root + sep)

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        if event in _REFUSED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in _REFUSED_MODULES:
            # ImportError, so that libraries with an optional ctypes dependency (numpy) still import
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        paths = ()
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            paths = (path,) if writing and path is not None else ()
        elif event in _PATH_EVENTS:
            paths = tuple(args[i] for i in _PATH_EVENTS[event] if i < len(args))
        busy[0] = True
        try:
            outside = [p for p in paths if p is not None and not inside(p)]
        finally:
            busy[0] = False
        if outside:
            raise PermissionError(f"sandbox: writing outside the working folder is not allowed: {outside[0]}")

    sys.addaudithook(hook)


def _run(cfg: dict, source: str, call: dict | None, result_file) -> None:
    code = compile(source, "solution.py", "exec")
    if call is None:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        return
    namespace = {"__name__": "__candidate__", "__builtins__": __builtins__}
    real_stdout, sys.stdout = sys.stdout, io.StringIO()  # the candidate's prints are not its answer
    try:
        exec(code, namespace)
        fn = namespace.get(call["fn_name"])
        if fn is None and isinstance(namespace.get("Solution"), type):  # LeetCode layout
            fn = getattr(namespace["Solution"](), call["fn_name"], None)
        if fn is None:
            raise NameError(f"function {call['fn_name']!r} is not defined")
        result = fn(*call["args"])
    finally:
        sys.stdout = real_stdout
    if isinstance(result, tuple):
        result = list(result)
    result_file.write(json.dumps({"result": result}, default=repr))
    result_file.flush()


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    with open(cfg["program"]) as f:
        source = f.read()
    result_file = open(cfg["result"], "w") if cfg.get("call") else None  # noqa: SIM115 - kept open
    os.chdir(cfg["root"])
    _set_limits(cfg)
    if cfg["guards"]:
        _install_guards(cfg["root"])
    try:
        _run(cfg, source, cfg.get("call"), result_file)
    except MemoryError:
        sys.stdout = sys.__stdout__
        os.write(2, b"MemoryError\n")
        os._exit(MEMORY_EXIT)
    try:
        sys.stdout.flush()
    except MemoryError:
        os._exit(MEMORY_EXIT)


if __name__ == "__main__":
    main()
