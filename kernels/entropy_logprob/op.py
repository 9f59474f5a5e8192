"""autograd.Function and the public `entropy_logprob`."""

from __future__ import annotations

import torch

from .._common import Backend, check_float, check_temperature, check_tokens, impl_module, resolve_backend


class EntropyLogprobFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, tokens, temperature, backend):
        ent, lp, lse, stats = impl_module(__package__, backend).forward(
            logits, tokens, temperature)
        ctx.save_for_backward(logits, tokens, ent, lse, stats)
        ctx.temperature, ctx.backend = temperature, backend
        ctx.set_materialize_grads(False)
        return ent, (lp if lp is not None else torch.empty(0, device=logits.device)), lse

    @staticmethod
    def backward(ctx, g_ent, g_lp, g_lse):
        logits, tokens, ent, lse, stats = ctx.saved_tensors
        if tokens is None:
            g_lp = None
        grad = impl_module(__package__, ctx.backend).backward(
            logits, tokens, ctx.temperature, ent, lse, stats, g_ent, g_lp, g_lse)
        return grad, None, None, None


def entropy_logprob(
    logits: torch.Tensor,
    tokens: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Full-vocabulary entropy, sampled-token log-prob and logsumexp of `softmax(logits / temperature)`.

    logits: [N, V] float (fp32/bf16/fp16/fp64); tokens: [N] int or None.
    Returns fp32 `(entropy[N], logprob[N] or None, lse[N])`; `lse` is of the scaled logits.
    Differentiable w.r.t. `logits` through all three outputs; peak extra memory is O(N) on the Triton
    path and O(chunk x V) on the torch path (never another [N, V] besides the gradient itself).
    """
    check_float("logits", logits, 2)
    n, v = logits.shape
    if tokens is not None:
        check_tokens("tokens", tokens, n, v, logits.device)
    temperature = check_temperature(temperature)
    backend = resolve_backend(backend, logits)
    ent, lp, lse = EntropyLogprobFunction.apply(logits, tokens, temperature, backend)
    return ent, (lp if tokens is not None else None), lse
