"""Kernel benchmarks: every op x {eager, torch.compile, Liger, chunked torch path, Triton}.

`pytest bench/ --benchmark-only`. Each implementation is first checked against float64 at the bench
shape; a failed check fails the test and no speed is reported. The reported median is harness.time_ms
(on CUDA `triton.testing.do_bench`, L2 flushed before every run), the same timer bench/gpu_check.py
uses; pytest-benchmark's own columns time the same call with wall-clock rounds. `benchmark.extra_info`
carries the ratio to the floor (docs/design.md §4), our ratio to every peer measured before it, and
peak extra memory. On CPU the chunked torch path's peak memory is compared with eager at N=4096,
V=49152 (target <= 10%).
"""

from __future__ import annotations

import pytest
import torch
from conftest import peak_extra_bytes
from harness import DEVICE, floor_ms, sync, time_ms
from kernel_cases import IMPLS, OPS, OURS, Skip, bench_shape, make_case, max_rel_err

GPU = DEVICE == "cuda"
# float64 references at the design shapes (docs/design.md §4) take minutes; the GPU check uses a slice of rows.
MEDIANS: dict[tuple[str, str], float] = {}
# Implementations whose CPU timing says nothing about the GPU design they stand for: skipped at once on a CPU.
CPU_MEANINGLESS = {
    "compile": "torch.compile on a CPU: minutes of compiling, and CPU codegen is not the GPU's",
    "liger": "Liger-Kernel is Triton on CUDA",
    "triton": "Triton is timed on CUDA only (the CPU interpreter is a correctness tool)",
    "triton_tiles": "Triton is timed on CUDA only (the CPU interpreter is a correctness tool)",
    "triton_per_token": "Triton is timed on CUDA only (the CPU interpreter is a correctness tool)",
}


def _check(op: str, impl: str, case) -> float:
    if case.reference is None:
        return 0.0
    err = max_rel_err(case.run(), case.reference())
    assert err <= case.tol, f"{op}/{impl}: error {err:.3g} vs float64 > {case.tol:g}: refusing to report speed"
    return err


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_speed(benchmark, floors, op, impl):
    if not GPU and impl in CPU_MEANINGLESS:
        pytest.skip(CPU_MEANINGLESS[impl])
    shape = bench_shape(op, DEVICE)
    try:
        case = make_case(op, impl, shape, DEVICE)
    except Skip as why:
        pytest.skip(str(why))
    if GPU and op not in ("select_forks", "cosine_similarity"):
        case.reference = None  # checked at odd shapes by bench/gpu_check.py and tests/kernels
    err = _check(op, impl, case)

    def run():
        out = case.run()
        sync()
        return out

    benchmark.pedantic(run, rounds=5 if GPU else 3, iterations=1, warmup_rounds=1)
    med_ms = time_ms(case.run) if GPU else benchmark.stats.stats.median * 1e3  # CPU: no cache flush to add
    MEDIANS[(op, impl)] = med_ms
    floor = floor_ms(floors, case.floor_bytes, case.floor_flops)
    info = benchmark.extra_info
    info.update(device=DEVICE, shape=shape, max_rel_err_vs_fp64=err, median_ms=round(med_ms, 4),
                floor_ms=round(floor, 4), x_floor=round(med_ms / floor, 3) if floor else None,
                copy_GBps=round(floors["copy_bytes_per_s"] / 1e9, 1),
                matmul_GFLOPs=round(floors["matmul_flops_per_s"] / 1e9, 1))
    if impl in OURS:
        for peer in ("eager", "compile", "liger", "torch"):
            if peer != impl and (op, peer) in MEDIANS:
                info[f"ratio_to_{peer}"] = round(med_ms / MEDIANS[(op, peer)], 3)
    if GPU:
        info["peak_extra_GiB"] = round(peak_extra_bytes(op, impl, shape) / 2**30, 3)


# Peak memory of the chunked torch path vs eager at the CPU shape.
MEM_SHAPES = {
    "entropy_logprob": {"N": 4096, "V": 49152},
    "linear_entropy_logprob": {"N": 4096, "V": 49152, "D": 256},
    "omniopd_loss": {"N": 1024, "V": 49152},
    "linear_omniopd_loss": {"N": 1024, "V": 49152, "D": 256},
}
MEM_TARGET = {"entropy_logprob": 0.10, "linear_entropy_logprob": 0.10}


@pytest.mark.skipif(GPU, reason="CPU peak-memory comparison (GPU peaks are in test_speed's extra_info)")
@pytest.mark.parametrize("op", list(MEM_SHAPES))
def test_cpu_peak_memory_vs_eager(benchmark, op):
    shape = MEM_SHAPES[op]
    eager = peak_extra_bytes(op, "eager", shape)
    ours = benchmark.pedantic(peak_extra_bytes, args=(op, "torch", shape), rounds=1, iterations=1)
    ratio = ours / max(eager, 1)
    benchmark.extra_info.update(shape=shape, torch_path_peak_MiB=round(ours / 2**20, 1),
                                eager_peak_MiB=round(eager / 2**20, 1), ratio_to_eager=round(ratio, 4),
                                target=MEM_TARGET.get(op))
    if op in MEM_TARGET:
        assert ratio <= MEM_TARGET[op], f"{op}: torch path peak {ours / 2**20:.0f} MiB is {ratio:.1%} of eager"


def test_floors_are_measured(benchmark, floors):
    """Records the floors themselves (copy bandwidth, matmul rate) in the benchmark JSON."""
    x = torch.empty(1 << 24, dtype=torch.uint8, device=DEVICE)
    y = torch.empty_like(x)
    benchmark.pedantic(lambda: y.copy_(x), rounds=5, iterations=1)
    benchmark.extra_info.update({k: (round(v / 1e9, 2) if isinstance(v, float) else v) for k, v in floors.items()})
