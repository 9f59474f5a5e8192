"""Chunked PyTorch path (CPU default): fp32 math on row chunks, so extra memory is O(chunk x V)."""

from __future__ import annotations

import torch

from .._common import chunk_rows


def row_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 scaled logits [c, V] -> (entropy, lse, logp[c, V])."""
    lse = torch.logsumexp(z, dim=-1)
    logp = z - lse[:, None]
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, 0.0).sum(-1)
    return entropy, lse, logp


def entropy_logprob_grad(
    logp: torch.Tensor, entropy: torch.Tensor, tok: torch.Tensor | None,
    g_ent: torch.Tensor | None, g_lp: torch.Tensor | None, g_lse: torch.Tensor | None,
) -> torch.Tensor:
    """d(loss)/d(scaled logits) for one chunk, from logp = z - lse (fp32)."""
    p = logp.exp()
    coef = torch.zeros_like(entropy)
    if g_lp is not None:
        coef = coef - g_lp
    if g_lse is not None:
        coef = coef + g_lse
    dz = p * coef[:, None]
    if g_ent is not None:
        # dH/dz_j = -p_j (log p_j + H); where p_j == 0 the term is 0 (avoid 0 * -inf).
        dz = dz - g_ent[:, None] * torch.where(p > 0, p * (logp + entropy[:, None]), 0.0)
    if g_lp is not None and tok is not None:
        dz.scatter_add_(1, tok[:, None], g_lp[:, None])
    return dz


def forward(logits: torch.Tensor, tokens: torch.Tensor | None, temperature: float):
    n, v = logits.shape
    ent = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(ent)
    lp = torch.empty_like(ent) if tokens is not None else None
    step = chunk_rows(v, n)
    for s in range(0, n, step):
        z = logits[s:s + step].float() / temperature
        e, l, logp = row_stats(z)
        ent[s:s + step], lse[s:s + step] = e, l
        if lp is not None:
            lp[s:s + step] = logp.gather(1, tokens[s:s + step].long()[:, None]).squeeze(1)
    return ent, lp, lse, None


def backward(logits, tokens, temperature, ent, lse, stats, g_ent, g_lp, g_lse) -> torch.Tensor:
    n, v = logits.shape
    grad = torch.empty_like(logits)
    step = chunk_rows(v, n)
    sl = lambda g, s: None if g is None else g[s:s + step].float()
    for s in range(0, n, step):
        # log_softmax, not z - lse: at |z| ~ 1e4 the fp32 lse alone carries ~1e-3 absolute error.
        logp = torch.log_softmax(logits[s:s + step].float() / temperature, dim=-1)
        tok = None if tokens is None else tokens[s:s + step].long()
        dz = entropy_logprob_grad(logp, ent[s:s + step], tok, sl(g_ent, s), sl(g_lp, s), sl(g_lse, s))
        grad[s:s + step] = dz / temperature
    return grad
