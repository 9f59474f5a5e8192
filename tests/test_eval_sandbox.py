"""The code sandbox against real misbehaving programs, and grading of stdin and function-call tests."""

import glob
import os
import signal
import socket
import tempfile
from dataclasses import replace

import pytest

from omniopd.eval.codegrade import CodeTests, extract_program, grade_code, run_tests, stdout_matches
from omniopd.eval.sandbox import MEMORY_EXIT, SandboxLimits, network_namespace_available, run_python

# A generous wall limit: on a loaded CI machine even the interpreter's start can take seconds.
LIMITS = SandboxLimits(cpu_s=1, wall_s=30, memory_mb=256, output_bytes=64 << 10)


def test_correct_program_runs():
    r = run_python("a, b = map(int, input().split())\nprint(a + b)", "20 22\n", LIMITS)
    assert (r.status, r.returncode, r.stdout) == ("ok", 0, "42\n")


def test_infinite_loop_is_killed_at_cpu_limit():
    r = run_python("while True:\n    pass", "", replace(LIMITS, wall_s=60))
    assert r.status == "timeout"
    assert r.returncode == -signal.SIGXCPU  # the kernel's CPU limit, not the wall clock, stopped it
    assert r.wall_s >= 0.9


def test_sleeping_program_is_killed_at_wall_limit():
    r = run_python("import time\ntime.sleep(60)", "", replace(LIMITS, wall_s=1.0))
    assert (r.status, r.returncode) == ("timeout", -signal.SIGKILL)
    assert 1.0 <= r.wall_s < 10.0


@pytest.mark.parametrize("code", [
    "x = bytearray(1 << 30)",  # one big allocation
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))",  # growing until refused
])
def test_memory_hog_is_stopped_at_memory_limit(code):
    r = run_python(code, "", replace(LIMITS, wall_s=60))
    assert (r.status, r.returncode) == ("memory_limit", MEMORY_EXIT)


def _listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


CONNECT = ("import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
           "s.sendall(b'leak')\nprint('connected')")


def test_network_is_refused():
    with _listener() as server:
        r = run_python(CONNECT.format(port=server.getsockname()[1]), "", LIMITS)
    assert r.status == "runtime_error" and "connected" not in r.stdout, r
    assert "PermissionError" in r.stderr


@pytest.mark.skipif(not network_namespace_available(), reason="unprivileged user namespaces are disabled")
def test_network_namespace_alone_refuses_network():
    # Without the audit hook, the kernel layer by itself: the child's namespace has no route out.
    with _listener() as server:
        server.settimeout(0.5)
        r = run_python(CONNECT.format(port=server.getsockname()[1]), "", replace(LIMITS, layers={"namespaces"}))
        with pytest.raises(TimeoutError):
            server.accept()
    assert r.status == "runtime_error" and "connected" not in r.stdout, r
    assert "unreachable" in r.stderr or "refused" in r.stderr


def test_cannot_write_outside_its_folder(tmp_path):
    target = tmp_path / "escaped.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
                 f"import os\nos.remove({str(victim)!r})",
                 f"import os\nos.rename({str(victim)!r}, 'mine.txt')",
                 "open('../escaped.txt', 'w').write('x')",
                 f"import os\nos.chdir({str(tmp_path)!r})\nopen({target.name!r}, 'w').write('x')",
                 f"import os\nos.symlink({str(tmp_path)!r}, 'link')\nopen('link/{target.name}', 'w')"):
        r = run_python(code, "", LIMITS)
        # Refused, or not even visible: inside its mount namespace /tmp is the program's own tmpfs
        assert r.status == "runtime_error", code
        assert "PermissionError" in r.stderr or "FileNotFoundError" in r.stderr, code
        assert not target.exists(), code
    assert not target.exists()
    assert victim.read_text() == "keep me"


def test_can_write_inside_its_folder_which_is_removed_afterwards():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "omniopd-sandbox-*")))
    code = ("import os\nopen('scratch.txt', 'w').write('hello')\nos.mkdir('sub')\n"
            "print(open('scratch.txt').read(), os.getcwd())")
    r = run_python(code, "", LIMITS)
    assert r.status == "ok"
    text, folder = r.stdout.split()
    assert text == "hello" and folder == "/tmp"  # its own tmpfs, mounted over /tmp inside its namespace
    assert not os.path.exists(os.path.join(folder, "scratch.txt"))
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "omniopd-sandbox-*"))) == before


def test_new_processes_are_refused():
    r = run_python("import subprocess\nsubprocess.run(['echo', 'hi'])", "", LIMITS)
    assert r.status == "runtime_error" and "PermissionError" in r.stderr
    r = run_python("import os\nos.system('echo hi')", "", LIMITS)
    assert r.status == "runtime_error" and "hi" not in r.stdout
    r = run_python("import os\nprint(os.system('echo hi'))", "", replace(LIMITS, layers={"landlock"}))
    assert r.stdout.strip() == str(127 << 8)  # the guards off, Landlock alone: no exec of /bin/sh


def test_output_is_capped():
    r = run_python("while True:\n    print('x' * 1000)", "", LIMITS)
    assert r.status == "output_limit"
    assert len(r.stdout) == LIMITS.output_bytes


def test_runtime_error_and_stdlib_imports():
    assert run_python("raise ValueError('boom')", "", LIMITS).status == "runtime_error"
    r = run_python("import collections, heapq, itertools, math\nprint(math.comb(5, 2))", "", LIMITS)
    assert (r.status, r.stdout) == ("ok", "10\n")


# ---- grading ----------------------------------------------------------------------------------------

STDIN_TESTS = CodeTests(inputs=["1 2\n", "10 -3\n"], outputs=["3\n", "7\n"])
CALL_TESTS = CodeTests(inputs=[["hello world"], ["a b  c"]], outputs=[["world hello"], "c b a"],
                       fn_name="reverse_words")


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nIt reads the input."


def test_correct_stdin_solution_passes():
    v = grade_code(fenced("a, b = map(int, input().split())\nprint(a + b)"), STDIN_TESTS, LIMITS)
    assert (v.passed, v.status, v.tests_passed, v.tests_total) == (True, "passed", 2, 2)


def test_wrong_stdin_solution_fails():
    v = grade_code(fenced("a, b = map(int, input().split())\nprint(a - b)"), STDIN_TESTS, LIMITS)
    assert (v.passed, v.status, v.tests_passed) == (False, "wrong_answer", 0)


def test_correct_function_call_solution_passes():
    code = "def reverse_words(s):\n    print('debug output is ignored')\n    return ' '.join(s.split()[::-1])"
    v = grade_code(fenced(code), CALL_TESTS, LIMITS)
    assert (v.passed, v.tests_passed) == (True, 2)


def test_leetcode_style_class_solution_passes():
    code = "class Solution:\n    def reverse_words(self, s):\n        return ' '.join(reversed(s.split()))"
    assert grade_code(fenced(code), CALL_TESTS, LIMITS).passed


def test_function_call_failures():
    assert grade_code(fenced("def reverse_words(s):\n    return s"), CALL_TESTS, LIMITS).status == "wrong_answer"
    assert grade_code(fenced("def other(s):\n    return s"), CALL_TESTS, LIMITS).status == "runtime_error"
    loop = grade_code(fenced("def reverse_words(s):\n    while True: pass"), CALL_TESTS, LIMITS)
    assert loop.status == "timeout"


def test_all_tests_counted_when_not_stopping_early():
    program = "n = int(input())\nprint(n if n < 5 else 0)"
    tests = CodeTests(inputs=["1", "7", "3"], outputs=["1", "7", "3"])
    v = run_tests(program, tests, LIMITS, stop_at_first_failure=False)
    assert (v.passed, v.tests_passed, v.tests_total, v.status) == (False, 2, 3, "wrong_answer")


def test_no_code_block():
    assert grade_code("print(input())", STDIN_TESTS, LIMITS).status == "no_code"


def test_extract_program():
    assert extract_program("```python\nprint(1)\n```\n```python\nprint(2)\n```") == "print(2)\n"
    assert extract_program("```\nprint(3)\n```") == "print(3)\n"
    assert extract_program("```py\nprint(4)\n```\n```text\nnot code\n```") == "print(4)\n"
    assert extract_program("```python\nprint(5)") is None  # unterminated: cut off by max tokens
    assert extract_program("no code") is None


def test_stdout_comparison():
    assert stdout_matches("3\n", "3")
    assert stdout_matches("1 2\n3  ", "1 2 3")
    assert stdout_matches("0.3333333", "0.333333333")
    assert not stdout_matches("0.33", "0.3333333")
    assert not stdout_matches("3\n4", "3")
    assert not stdout_matches("YES", "yes")
