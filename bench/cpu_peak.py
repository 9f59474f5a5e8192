"""Peak extra CPU memory of one benchmark case, measured in a fresh process.

tracemalloc does not see torch's allocator, so this reads the kernel's account of resident memory:
the high-water mark (VmHWM) is reset to the current resident size just before the op (Linux: write
5 to /proc/self/clear_refs), and the peak after the op minus the resident size before it is the op's
extra peak. Without that reset it falls back to getrusage's ru_maxrss, which can hide an op's peak
below an earlier one. Prints one JSON line: {"extra_bytes": ..., "method": ...}.
Usage: python bench/cpu_peak.py OP IMPL '{"N": 4096, "V": 49152}'
"""

from __future__ import annotations

import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernel_cases import make_case  # noqa: E402


def main() -> None:
    op, impl, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tiny = {k: max(1, min(x, 64)) for k, x in shape.items()}
    make_case(op, impl, tiny).run()  # warm-up: lazy imports, thread pools
    case = make_case(op, impl, shape)
    if _reset_peak():
        before = _status_kb("VmRSS")
        out = case.run()
        after, method = _status_kb("VmHWM"), "VmHWM after clear_refs"
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = case.run()
        after, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    del out
    print(json.dumps({"extra_bytes": max(0, after - before) * 1024, "method": method}))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") > 0
    except OSError:
        return False


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


if __name__ == "__main__":
    main()
