"""Chunked PyTorch path: logits are built and consumed one row chunk at a time, never [N, V]."""

from __future__ import annotations

import torch

from .._common import chunk_rows, head_grads
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
    wf = weight.float()
    bf = None if bias is None else bias.float()
    sl = lambda g, s, e: None if g is None else g[s:e].float()

    def chunk_grad(s, e, _):
        logp = torch.log_softmax(chunk_logits(hidden[s:e], wf, bf, temperature), dim=-1)  # z - lse loses digits
        tok = None if tokens is None else tokens[s:e].long()
        dz = entropy_logprob_grad(logp, ent[s:e], tok, sl(g_ent, s, e), sl(g_lp, s, e), sl(g_lse, s, e))
        return dz.div_(temperature)

    step = chunk_rows(weight.shape[0], hidden.shape[0])
    dh, dw, db = head_grads(hidden, weight, step, chunk_grad, bias=bias, dtype=torch.float32, scratch=False)
    return dh, dw.to(weight.dtype), (None if db is None else db.to(bias.dtype))
