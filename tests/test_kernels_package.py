"""`omniopd-kernels` is its own distribution: its wheel needs torch and triton only, and works alone.

The wheel is built offline from a copy of kernels/, installed into a fresh virtual environment that
holds nothing but torch, triton, numpy (for the interpreter) and what they require (linked from this environment, so no
download), and one op runs there against a float64 reference on the torch and the Triton path.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

ALONE = r"""
import importlib.metadata as md, importlib.util, json, torch, omniopd_kernels as K
torch.manual_seed(0)
logits = torch.randn(37, 1009) * 4
tokens = torch.randint(0, 1009, (37,))
p = torch.log_softmax(logits.double(), -1)
want_ent, want_lp = -(p.exp() * p).sum(-1), p.gather(1, tokens[:, None])[:, 0]
err = {}
for backend in ("torch", "triton"):
    ent, lp, _ = K.entropy_logprob(logits, tokens, backend=backend)
    err[backend] = max((ent.double() - want_ent).abs().max().item(), (lp.double() - want_lp).abs().max().item())
print(json.dumps({"file": K.__file__, "err": err,
                  "missing": [m for m in ("transformers", "vllm", "sentence_transformers", "omniopd")
                              if importlib.util.find_spec(m) is None],
                  "dists": sorted(d.metadata["Name"].lower().replace("_", "-") for d in md.distributions())}))
"""


def _closure(names: list[str]) -> set[str]:
    """The installed distributions `names` need, themselves included (markers evaluated, no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _link_distribution(name: str, into: Path) -> None:
    """Symlink the top-level entries of an installed distribution (from its RECORD) into `into`."""
    dist = metadata.distribution(name)
    assert dist.files is not None, f"{name} has no RECORD"
    for top in {f.parts[0] for f in dist.files if f.parts[0] != ".."}:
        source = Path(dist.locate_file(top))
        if source.exists() and not (into / top).exists():
            (into / top).symlink_to(source)


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "kernels", src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out), str(src)], check=True, timeout=300)
    (wheel,) = out.glob("omniopd_kernels-*.whl")
    return wheel


def test_wheel_installs_alone_with_torch_and_triton_only(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        names = zf.namelist()
    requires = [Requirement(line.split(":", 1)[1]) for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert sorted(r.name for r in requires if r.marker is None) == ["torch", "triton"], meta
    assert [r.name for r in requires if r.marker is not None] == ["numpy"], meta  # the `interpret` extra
    assert "omniopd_kernels/entropy_logprob/triton_impl.py" in names and not any("tests/" in n for n in names)

    # A fresh environment: the wheel (a pure-Python wheel installs by unpacking) + the closure of torch,
    # triton and numpy (the `interpret` extra: Triton's interpreter runs the kernels on this CPU).
    env = tmp_path / "env"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    zipfile.ZipFile(wheel).extractall(site)
    deps = tmp_path / "deps"
    deps.mkdir()
    allowed = _closure(["torch", "triton", "numpy"])
    for name in allowed:
        _link_distribution(name, deps)
    (site / "torch_and_triton.pth").write_text(f"{deps}\n")

    env_vars = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    run = subprocess.run([str(env / "bin" / "python"), "-I", "-c", ALONE], capture_output=True, text=True,
                         env=env_vars, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(got["file"]).is_relative_to(site), got["file"]  # the wheel's copy, not this checkout
    assert set(got["dists"]) == allowed | {"omniopd-kernels"}, got["dists"]
    assert got["missing"] == ["transformers", "vllm", "sentence_transformers", "omniopd"]
    assert got["err"]["torch"] < 1e-4 and got["err"]["triton"] < 1e-4, got["err"]
