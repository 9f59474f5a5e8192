"""Kernel benchmarks: every op x {eager, torch.compile, Liger, chunked torch path, Triton}.

`pytest bench/ --benchmark-only`. Each implementation is first checked against float64 at the bench
shape; a failed check fails the test and no speed is reported. `benchmark.extra_info` carries the
ratio to the floor (DESIGN.md §4: bytes over measured copy bandwidth, FLOPs over measured matmul
rate), our ratio to every peer measured before it, and peak extra memory. On CPU the chunked torch
path's peak memory is compared with eager at N=4096, V=49152 (target <= 10%).
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, peak_extra_bytes, sync
from kernel_cases import IMPLS, OPS, Skip, make_case, max_rel_err

GPU = DEVICE == "cuda"
# Timing shapes: DESIGN.md §4 on a GPU; small on CPU so the whole file runs in a few minutes.
SHAPES = {
    "entropy_logprob": {"N": 16384, "V": 151936} if GPU else {"N": 1024, "V": 16384},
    "linear_entropy_logprob": {"N": 16384, "V": 151936, "D": 2048} if GPU else {"N": 512, "V": 16384, "D": 256},
    "linear_cross_entropy": {"N": 16384, "V": 151936, "D": 2048} if GPU else {"N": 256, "V": 8192, "D": 128},
    "omniopd_loss": {"N": 16384, "V": 151936} if GPU else {"N": 512, "V": 16384},
    "linear_omniopd_loss": {"N": 16384, "V": 151936, "D": 2048} if GPU else {"N": 256, "V": 8192, "D": 128},
    "select_forks": {"B": 256, "T": 8192, "M": 8, "C": 32} if GPU else {"B": 64, "T": 2048, "M": 8, "C": 32},
    "cosine_similarity": {"B": 512, "K": 8, "M": 16, "E": 384} if GPU else {"B": 64, "K": 8, "M": 16, "E": 384},
}
# float64 references at DESIGN shapes would take minutes; the GPU check uses a slice of the rows instead.
MEDIANS: dict[tuple[str, str], float] = {}


def _check(op: str, impl: str, case) -> float:
    if case.reference is None:
        return 0.0
    err = max_rel_err(case.run(), case.reference())
    assert err <= case.tol, f"{op}/{impl}: error {err:.3g} vs float64 > {case.tol:g}: refusing to report speed"
    return err


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_speed(benchmark, floors, op, impl):
    shape = SHAPES[op]
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
    med_ms = benchmark.stats.stats.median * 1e3
    MEDIANS[(op, impl)] = med_ms
    floor_ms = max(case.floor_bytes / floors["copy_bytes_per_s"], case.floor_flops / floors["matmul_flops_per_s"]) * 1e3
    info = benchmark.extra_info
    info.update(device=DEVICE, shape=shape, max_rel_err_vs_fp64=err, median_ms=round(med_ms, 4),
                floor_ms=round(floor_ms, 4), x_floor=round(med_ms / floor_ms, 3) if floor_ms else None,
                copy_GBps=round(floors["copy_bytes_per_s"] / 1e9, 1),
                matmul_GFLOPs=round(floors["matmul_flops_per_s"] / 1e9, 1))
    if impl in ("torch", "triton"):
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
