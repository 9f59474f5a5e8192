"""Shared pieces of the fused-linear ops: a logits tile `h·Wᵀ (+b)` computed with tl.dot and its
bookkeeping (tiles, vocabulary splits, backward row chunks) for `triton_tiles`; fp32 logits of a row
chunk and its size for `triton`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import grad_dtype, interpreting


@triton.jit
def logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, N, V, D, stride_h, stride_w, inv_tau,
                HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """fp32 [BLOCK_N, BLOCK_V] tile of (h[rows] · W[cols]ᵀ + b[cols]) / tau; -inf on columns >= V."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    rd = tl.arange(0, BLOCK_D)
    hrow = h_ptr + rows.to(tl.int64)[:, None] * stride_h
    wrow = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    rmask = rows[:, None] < N
    cmask = cols[:, None] < V
    for d0 in range(0, D, BLOCK_D):
        cd = d0 + rd
        dmask = cd[None, :] < D
        a = tl.load(hrow + cd[None, :], mask=rmask & dmask, other=0.0)
        b = tl.load(wrow + cd[None, :], mask=cmask & dmask, other=0.0)
        if UPCAST:  # interpreter / mixed dtypes: dot in fp32 (exact for bf16 inputs)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < V, other=0.0).to(tl.float32)[None, :]
    acc = acc * inv_tau
    return tl.where(cols[None, :] < V, acc, float("-inf"))


@triton.jit
def store_logits_grad(dz_ptr, dz, rows, cols, row0, n_hi, V, stride_dz, inv_tau):
    """Write a [BLOCK_N, BLOCK_V] tile of d loss / d logits (chain rule through 1/tau) into the chunk buffer."""
    out = dz_ptr + (rows - row0).to(tl.int64)[:, None] * stride_dz + cols[None, :]
    tl.store(out, (dz * inv_tau).to(dz_ptr.dtype.element_ty), mask=(rows < n_hi)[:, None] & (cols[None, :] < V))


@triton.jit
def forward_rows(tok_ptr, N, BLOCK_N: tl.constexpr, HAS_TOK: tl.constexpr):
    """(rows, row mask, each row's token) of this forward program (grid axis 0); without tokens, tok = rows."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    tok = rows
    if HAS_TOK:
        tok = tl.load(tok_ptr + rows, mask=rmask, other=-1)
    return rows, rmask, tok


@triton.jit
def online_start(BLOCK_N: tl.constexpr):
    """Per-row online-softmax state before the first tile: (running max, sum of exp, centred weighted sum)."""
    return (tl.full([BLOCK_N], float("-inf"), tl.float32), tl.zeros([BLOCK_N], tl.float32),
            tl.zeros([BLOCK_N], tl.float32))


@triton.jit
def split_columns(V, split_len):
    """[v_lo, v_hi): the vocabulary columns of this forward program's split (grid axis 1)."""
    v_lo = tl.program_id(1) * split_len
    return v_lo, tl.minimum(V, v_lo + split_len)


@triton.jit
def online_max_step(m, x):
    """One tile of an online softmax over x [BLOCK_N, BLOCK_V]: (new running max, factor that rescales
    sums kept against the old max, x - new max, exp of that)."""
    m_new = tl.maximum(m, tl.max(x, 1))
    alpha = tl.exp(m - m_new)
    d = x - m_new[:, None]
    return m_new, alpha, d, tl.exp(d)


@triton.jit
def token_logit(z, cols, tok):
    """Per row, the tile's logit at that row's token (0 when the token lies outside the tile)."""
    return tl.sum(tl.where(cols[None, :] == tok[:, None], z, 0.0), 1)


@triton.jit
def store_partial(part_ptr, k, x, rows, N, rmask):
    """Write statistic k of this program's split into the [K, splits, N] partials."""
    tl.store(part_ptr + (k * tl.num_programs(1) + tl.program_id(1)) * N + rows, x, mask=rmask)


@triton.jit
def chunk_tile(row0, n_hi, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """(rows, cols, row mask) of this backward program's tile inside the row chunk [row0, n_hi)."""
    rows = row0 + tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V), rows < n_hi


def merge_splits(m: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-split running maxima m and sums s ([splits, N]) -> (row max, each split's rescale factor, total sum)."""
    mx = m.max(0).values
    w = torch.exp(m - mx)
    return mx, w, (s * w).sum(0)


def dot_flags(*tensors: torch.Tensor) -> tuple[bool, str]:
    """(UPCAST, PREC): fp32 operands get IEEE dots (tf32 would cost ~1e-3 relative error)."""
    dtypes = {t.dtype for t in tensors}
    half = dtypes <= {torch.bfloat16} or dtypes <= {torch.float16}
    prec = "tf32" if half else "ieee"
    return interpreting() or not half, prec


# Fixed tiles under the interpreter (numpy per op: fewer, larger tiles are faster); GPU configs autotune.
INTERP_TILES = {"BLOCK_N": 32, "BLOCK_V": 128, "BLOCK_D": 32}
SPLIT_ALIGN = 256  # a vocabulary split is a multiple of every BLOCK_V in the configs


def fwd_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_D": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_V": 256, "BLOCK_D": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_V": 256, "BLOCK_D": 64}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_D": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_D": 64}, num_warps=4, num_stages=4),
    ]


def autotuned(kernel, key: list[str]):
    """The kernel as launched: fixed INTERP_TILES under the interpreter, autotuned over fwd_configs on a GPU."""
    return kernel if interpreting() else triton.autotune(fwd_configs(), key=key)(kernel)


def launch_split_rows(kernel, n: int, splits: int, args: tuple, flags: dict) -> None:
    """Forward grid: one program per (block of rows, vocabulary split)."""
    if interpreting():
        kernel[(triton.cdiv(n, INTERP_TILES["BLOCK_N"]), splits)](*args, **flags, **INTERP_TILES)
    else:
        kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)](*args, **flags)


def launch_row_chunk(kernel, rows: int, v: int, args: tuple, flags: dict) -> None:
    """Backward grid over one row chunk: one program per (block of rows, block of vocabulary)."""
    if interpreting():
        kernel[(triton.cdiv(rows, INTERP_TILES["BLOCK_N"]), triton.cdiv(v, INTERP_TILES["BLOCK_V"]))](
            *args, **flags, **INTERP_TILES)
    else:
        kernel[lambda meta: (triton.cdiv(rows, meta["BLOCK_N"]), triton.cdiv(v, meta["BLOCK_V"]))](*args, **flags)


def vocab_splits(n: int, v: int, device: torch.device) -> tuple[int, int]:
    """(num_splits, split_len): enough programs to fill the GPU when N is small."""
    if interpreting() or device.type != "cuda":
        return 1, v
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(n, 128)
    want = max(1, min(triton.cdiv(2 * sms, row_blocks), triton.cdiv(v, SPLIT_ALIGN)))
    split_len = triton.cdiv(triton.cdiv(v, want), SPLIT_ALIGN) * SPLIT_ALIGN
    return triton.cdiv(v, split_len), split_len


# Scratch budget of the backward's [rows, V] logits-gradient buffer (tests shrink it to force chunking).
BWD_CHUNK_BYTES = 1 << 29


def bwd_chunk_rows(hidden: torch.Tensor, weight: torch.Tensor) -> int:
    """Rows per backward chunk: the [rows, V] gradient-of-logits buffer stays under BWD_CHUNK_BYTES."""
    n, v = hidden.shape[0], weight.shape[0]
    elt = torch.finfo(grad_dtype(hidden, weight)).bits // 8
    rows = max(32, (BWD_CHUNK_BYTES // max(v * elt, 1)) // 32 * 32)
    return min(rows, n)


def fp32_logits(weight: torch.Tensor, bias: torch.Tensor | None = None):
    """h -> h @ weight.T (+ bias) in fp32: fp32 accumulation, never rounded through bf16."""
    half = weight.dtype in (torch.bfloat16, torch.float16)
    bf = None if bias is None else bias.float()
    if weight.is_cuda and half:
        def mm(h):
            try:
                z = torch.mm(h, weight.T, out_dtype=torch.float32)  # cuBLAS with an fp32 epilogue
            except (TypeError, RuntimeError, NotImplementedError):  # torch without out_dtype
                z = torch.mm(h.float(), weight.float().T)
            return z if bf is None else z.add_(bf)
        return mm
    wf = weight.float()
    return lambda h: torch.mm(h.float(), wf.T) if bf is None else torch.addmm(bf, h.float(), wf.T)


def logits_chunk_rows(n: int, v: int, heads: int = 1) -> int:
    """Rows per chunk of the cuBLAS path: `heads` fp32 [rows, V] logits within BWD_CHUNK_BYTES."""
    return min(n, max(32, (BWD_CHUNK_BYTES // max(heads * v * 4, 1)) // 32 * 32))
