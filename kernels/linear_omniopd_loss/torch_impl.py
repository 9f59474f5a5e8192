"""Chunked PyTorch path: student and reference logits built one row chunk at a time, never [N, V]."""

from __future__ import annotations

import torch

from .._common import chunk_rows, head_grads
from ..omniopd_loss.torch_impl import chunk_grad, chunk_terms


def forward(hidden, weight, ref_hidden, ref_weight, tokens, temperature):
    n, v = hidden.shape[0], weight.shape[0]
    wf, rwf = weight.float(), ref_weight.float()
    lp = torch.empty(n, dtype=torch.float32, device=hidden.device)
    kl = torch.empty_like(lp)
    step = chunk_rows(2 * v, n)
    for s in range(0, n, step):
        e = s + step
        z = (hidden[s:e].float() @ wf.T).div_(temperature)
        r = (ref_hidden[s:e].float() @ rwf.T).div_(temperature)
        lp[s:e], kl[s:e], _, _ = chunk_terms(z, r, tokens[s:e].long())
    return lp, kl, None


def backward(hidden, weight, ref_hidden, ref_weight, tokens, temperature, stats, g_lp, g_kl):
    n, v = hidden.shape[0], weight.shape[0]
    wf, rwf = weight.float(), ref_weight.float()
    zeros = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    g_lp = zeros if g_lp is None else g_lp.float()
    g_kl = zeros if g_kl is None else g_kl.float()

    def logits_grad(s, e, _):
        logp = torch.log_softmax((hidden[s:e].float() @ wf.T).div_(temperature), dim=-1)
        logq = torch.log_softmax((ref_hidden[s:e].float() @ rwf.T).div_(temperature), dim=-1)
        return chunk_grad(logp, logq, tokens[s:e].long(), g_lp[s:e], g_kl[s:e]).div_(temperature)

    dh, dw, _ = head_grads(hidden, weight, chunk_rows(2 * v, n), logits_grad, dtype=torch.float32, scratch=False)
    return dh, dw.to(weight.dtype)
