"""Chunked PyTorch path (CPU default): fp32 row chunks of student and reference logits at once."""

from __future__ import annotations

import torch

from .._common import chunk_rows


def chunk_terms(z: torch.Tensor, r: torch.Tensor, tok: torch.Tensor):
    """fp32 scaled logits [c, V] -> (logprob, kl, logp, logq)."""
    logp = torch.log_softmax(z, dim=-1)
    logq = torch.log_softmax(r, dim=-1)
    q = logq.exp()
    kl = torch.where(q > 0, q * (logq - logp), 0.0).sum(-1)
    return logp.gather(1, tok[:, None]).squeeze(1), kl, logp, logq


def chunk_grad(logp, logq, tok, g_lp, g_kl) -> torch.Tensor:
    """d/dz of Σ g_lp·logp(y) + g_kl·KL(q‖p) = g_lp(onehot - p) + g_kl(p - q)."""
    p = logp.exp()
    dz = p * (g_kl - g_lp)[:, None] - g_kl[:, None] * logq.exp()
    dz.scatter_add_(1, tok[:, None], g_lp[:, None])
    return dz


def forward(logits, ref_logits, tokens, temperature):
    n, v = logits.shape
    lp = torch.empty(n, dtype=torch.float32, device=logits.device)
    kl = torch.empty_like(lp)
    step = chunk_rows(2 * v, n)
    for s in range(0, n, step):
        e = s + step
        lp[s:e], kl[s:e], _, _ = chunk_terms(logits[s:e].float() / temperature,
                                             ref_logits[s:e].float() / temperature, tokens[s:e].long())
    return lp, kl, None


def backward(logits, ref_logits, tokens, temperature, stats, g_lp, g_kl) -> torch.Tensor:
    n, v = logits.shape
    grad = torch.empty_like(logits)
    step = chunk_rows(2 * v, n)
    zeros = torch.zeros(n, dtype=torch.float32, device=logits.device)
    g_lp = zeros if g_lp is None else g_lp.float()
    g_kl = zeros if g_kl is None else g_kl.float()
    for s in range(0, n, step):
        e = s + step
        logp = torch.log_softmax(logits[s:e].float() / temperature, dim=-1)
        logq = torch.log_softmax(ref_logits[s:e].float() / temperature, dim=-1)
        grad[s:e] = chunk_grad(logp, logq, tokens[s:e].long(), g_lp[s:e], g_kl[s:e]) / temperature
    return grad
