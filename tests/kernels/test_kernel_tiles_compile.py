"""The `triton_tiles` kernels compile with Triton's real compiler for an H100/H200 target (sm_90), on any host.

CPU tests run the kernels under the interpreter, which never lowers them: a helper that the interpreter
accepts but the compiler rejects would first fail on a GPU. Compiling needs no GPU (the target is given and
ptxas ships with triton), only a process where TRITON_INTERPRET is unset before triton is imported, so this
file runs itself as a script in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BLOCKS = {"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_D": 64}
HEAD = {"h_ptr": "*bf16", "w_ptr": "*bf16"}
STRIDES = {"stride_h": "i32", "stride_w": "i32"}
FLAGS = {"UPCAST": "constexpr", "PREC": "constexpr"}
BLOCK_SIG = dict.fromkeys(BLOCKS, "constexpr")
# (op module, kernel, signature, constexpr values): bf16 heads with tf32 dots, bias and tokens on.
KERNELS = [
    ("linear_entropy_logprob", "_fwd", {
        **HEAD, "b_ptr": "*bf16", "tok_ptr": "*i64", "part_ptr": "*fp32", "N": "i32", "V": "i32", "D": "i32",
        "split_len": "i32", **STRIDES, "inv_tau": "fp32", "HAS_BIAS": "constexpr", "HAS_TOK": "constexpr", **FLAGS,
        **BLOCK_SIG}, {"HAS_BIAS": True, "HAS_TOK": True}),
    ("linear_entropy_logprob", "_bwd", {
        **HEAD, "b_ptr": "*bf16", "tok_ptr": "*i64", "ent_ptr": "*fp32", "st_ptr": "*fp32", "N": "i32",
        "gent_ptr": "*fp32", "glp_ptr": "*fp32", "glse_ptr": "*fp32", "dz_ptr": "*bf16", "row0": "i32",
        "n_hi": "i32", "V": "i32", "D": "i32", **STRIDES, "stride_dz": "i32", "inv_tau": "fp32",
        "HAS_BIAS": "constexpr", "HAS_TOK": "constexpr", **FLAGS, **BLOCK_SIG}, {"HAS_BIAS": True, "HAS_TOK": True}),
    ("linear_omniopd_loss", "_fwd", {
        **HEAD, "rh_ptr": "*bf16", "rw_ptr": "*bf16", "tok_ptr": "*i64", "part_ptr": "*fp32", "N": "i32",
        "V": "i32", "D": "i32", "DR": "i32", "split_len": "i32", **STRIDES, "stride_rh": "i32", "stride_rw": "i32",
        "inv_tau": "fp32", **FLAGS, "UPCAST_R": "constexpr", "PREC_R": "constexpr", **BLOCK_SIG},
     {"UPCAST_R": False, "PREC_R": "tf32"}),
    ("linear_omniopd_loss", "_bwd", {
        **HEAD, "rh_ptr": "*bf16", "rw_ptr": "*bf16", "tok_ptr": "*i64", "st_ptr": "*fp32", "N": "i32",
        "glp_ptr": "*fp32", "gkl_ptr": "*fp32", "dz_ptr": "*bf16", "row0": "i32", "n_hi": "i32", "V": "i32",
        "D": "i32", "DR": "i32", **STRIDES, "stride_rh": "i32", "stride_rw": "i32", "stride_dz": "i32",
        "inv_tau": "fp32", **FLAGS, "UPCAST_R": "constexpr", "PREC_R": "constexpr", **BLOCK_SIG},
     {"UPCAST_R": False, "PREC_R": "tf32"}),
]


def compile_all() -> dict[str, dict]:
    """Per kernel: whether it compiled, the error if not, and whether its dots became sm_90 wgmma."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    out = {}
    for op, name, signature, constants in KERNELS:
        kernel = getattr(importlib.import_module(f"omniopd_kernels.{op}.tiles_impl"), name)
        kernel = getattr(kernel, "fn", kernel)  # off the interpreter the kernel is wrapped in an autotuner
        constexprs = {"UPCAST": False, "PREC": "tf32", **BLOCKS, **constants}
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))
        except Exception as e:  # noqa: BLE001 - reported to the test, which names the kernel
            out[f"{op}.{name}"] = {"error": f"{type(e).__name__}: {e}"}
            continue
        out[f"{op}.{name}"] = {"error": None, "cubin_bytes": len(compiled.asm["cubin"]),
                               "wgmma": "warp_group_dot" in compiled.asm["ttgir"]}
    return out


def test_tiles_kernels_compile_for_sm90_with_tensor_core_dots(tmp_path):
    pytest.importorskip("triton")
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from a warm cache
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(results) == sorted(f"{op}.{name}" for op, name, _, _ in KERNELS)
    for kernel, result in results.items():
        assert result["error"] is None, f"{kernel}: {result['error']}"
        assert result["cubin_bytes"] > 0 and result["wgmma"], f"{kernel}: {result}"


if __name__ == "__main__":
    print(json.dumps(compile_all()))
