"""`triton` path (the default on CUDA): per row chunk a matmul (cuBLAS on CUDA) writes fp32 logits,
nothing rounded through bf16, and the streaming row kernels of `entropy_logprob` read them once;
scratch <= `_linear_tiles.BWD_CHUNK_BYTES`. The backward remakes each chunk's logits the same way."""

from __future__ import annotations

import torch

from .._common import head_grads
from .._linear_tiles import fp32_logits, logits_chunk_rows
from ..entropy_logprob import triton_impl as rows


def forward(hidden, weight, bias, tokens, temperature):
    n, v = hidden.shape[0], weight.shape[0]
    out = torch.full((3, n), float("nan"), dtype=torch.float32, device=hidden.device)
    stats = torch.full((2, n), float("nan"), dtype=torch.float32, device=hidden.device)
    z_of = fp32_logits(weight, bias)
    step = logits_chunk_rows(n, v)
    for s in range(0, n, step):
        e = min(n, s + step)
        ent, lp, lse, mx = rows.forward(z_of(hidden[s:e]), None if tokens is None else tokens[s:e], temperature)
        out[0, s:e], out[2, s:e], stats[:, s:e] = ent, lse, mx
        if lp is not None:
            out[1, s:e] = lp
    return out[0], (out[1] if tokens is not None else None), out[2], stats


def backward(hidden, weight, bias, tokens, temperature, ent, lse, stats, g_ent, g_lp, g_lse):
    z_of = fp32_logits(weight, bias)
    sl = lambda g, s, e: None if g is None else g[s:e]

    def chunk_grad(s, e, buf):
        return rows.backward(z_of(hidden[s:e]), sl(tokens, s, e), temperature, ent[s:e], lse[s:e], stats[:, s:e],
                             sl(g_ent, s, e), sl(g_lp, s, e), sl(g_lse, s, e), out=buf)

    step = logits_chunk_rows(hidden.shape[0], weight.shape[0])
    dh, dw, db = head_grads(hidden, weight, step, chunk_grad, bias=bias)
    return dh, dw.to(weight.dtype), (None if db is None else db.to(bias.dtype))
