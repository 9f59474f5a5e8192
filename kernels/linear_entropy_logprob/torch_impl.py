"""Chunked PyTorch path: logits are built and consumed one row chunk at a time, never [N, V]."""

from __future__ import annotations

import torch

from .._common import chunk_rows
from ..entropy_logprob.torch_impl import entropy_logprob_grad, row_stats


def chunk_logits(h, wf, bf, temperature: float) -> torch.Tensor:
    z = h.float() @ wf.T
    if bf is not None:
        z += bf
    return z.div_(temperature)


def forward(hidden, weight, bias, tokens, temperature):
    n, v = hidden.shape[0], weight.shape[0]
    wf = weight.float()
    bf = None if bias is None else bias.float()
    ent = torch.empty(n, dtype=torch.float32, device=hidden.device)
    lse = torch.empty_like(ent)
    lp = torch.empty_like(ent) if tokens is not None else None
    step = chunk_rows(v, n)
    for s in range(0, n, step):
        e, l, logp = row_stats(chunk_logits(hidden[s:s + step], wf, bf, temperature))
        ent[s:s + step], lse[s:s + step] = e, l
        if lp is not None:
            lp[s:s + step] = logp.gather(1, tokens[s:s + step].long()[:, None]).squeeze(1)
    return ent, lp, lse, None


def backward(hidden, weight, bias, tokens, temperature, ent, lse, stats, g_ent, g_lp, g_lse):
    n, v = hidden.shape[0], weight.shape[0]
    wf = weight.float()
    bf = None if bias is None else bias.float()
    dh = torch.empty_like(hidden)
    dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    db = None if bias is None else torch.zeros(v, dtype=torch.float32, device=weight.device)
    step = chunk_rows(v, n)
    sl = lambda g, s: None if g is None else g[s:s + step].float()
    for s in range(0, n, step):
        hf = hidden[s:s + step].float()
        logp = torch.log_softmax(chunk_logits(hf, wf, bf, temperature), dim=-1)  # z - lse loses digits at |z|~1e4
        tok = None if tokens is None else tokens[s:s + step].long()
        dz = entropy_logprob_grad(logp, ent[s:s + step], tok, sl(g_ent, s), sl(g_lp, s), sl(g_lse, s))
        dz.div_(temperature)
        dh[s:s + step] = dz @ wf
        dw.addmm_(dz.T, hf)
        if db is not None:
            db += dz.sum(0)
    return dh, dw.to(weight.dtype), (None if db is None else db.to(bias.dtype))
