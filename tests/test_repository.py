"""The clone is self-contained: vendored benchmark sets intact, no path that points outside the repository."""

import hashlib
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "data" / "benchmarks"
# The workplace's copies outside the clone; spelt in pieces so this file does not match itself.
OUTSIDE = re.compile("|".join(re.escape(prefix + "shared") for prefix in ("../", "/work/")))
# Files owned by other work in flight that still cite the old workplace copy; each entry goes when its
# file is fixed (the test below fails while an entry is stale, so the list cannot silently outlive them).
PENDING: set[str] = set()


def test_vendored_benchmarks_match_their_checksums():
    lines = (BENCHMARKS / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    on_disk = {str(p.relative_to(BENCHMARKS)) for p in (BENCHMARKS / "math").glob("*.jsonl")}
    assert set(listed) == on_disk and len(on_disk) == 7
    for name, digest in listed.items():
        assert hashlib.sha256((BENCHMARKS / name).read_bytes()).hexdigest() == digest, name


def test_every_vendored_set_has_a_license_row():
    licenses = (BENCHMARKS / "LICENSES.md").read_text()
    readme = (BENCHMARKS / "README.md").read_text()
    for path in (BENCHMARKS / "math").glob("*.jsonl"):
        assert f"math/{path.name}" in licenses and f"math/{path.name}" in readme, path.name


def test_no_tracked_file_points_outside_the_clone():
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    offenders = set()
    for name in filter(None, tracked.decode().split("\0")):
        path = ROOT / name
        if name.startswith("data/") or not path.is_file() or path.stat().st_size > 1 << 20:
            continue
        if OUTSIDE.search(path.read_text(errors="replace")):
            offenders.add(name)
    assert offenders - PENDING == set(), f"paths outside the repository in {sorted(offenders - PENDING)}"
    assert PENDING - offenders == set(), f"fixed, remove from PENDING: {sorted(PENDING - offenders)}"
