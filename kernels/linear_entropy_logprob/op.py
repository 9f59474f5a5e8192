"""autograd.Function and the public `linear_entropy_logprob`."""

from __future__ import annotations

import torch

from .._common import (
    LINEAR_BACKENDS,
    LinearBackend,
    check_device,
    check_float,
    check_temperature,
    check_tokens,
    impl_module,
    resolve_backend,
)


class LinearEntropyLogprobFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, temperature, backend):
        ent, lp, lse, stats = impl_module(__package__, backend).forward(
            hidden, weight, bias, tokens, temperature)
        ctx.save_for_backward(hidden, weight, bias, tokens, ent, lse, stats)
        ctx.temperature, ctx.backend = temperature, backend
        ctx.set_materialize_grads(False)
        return ent, (lp if lp is not None else torch.empty(0, device=hidden.device)), lse

    @staticmethod
    def backward(ctx, g_ent, g_lp, g_lse):
        hidden, weight, bias, tokens, ent, lse, stats = ctx.saved_tensors
        if tokens is None:
            g_lp = None
        dh, dw, db = impl_module(__package__, ctx.backend).backward(
            hidden, weight, bias, tokens, ctx.temperature, ent, lse, stats, g_ent, g_lp, g_lse)
        return dh, dw, db, None, None, None


def check_head(hidden_name: str, hidden, weight_name: str, weight, bias=None) -> None:
    check_float(hidden_name, hidden, 2)
    check_float(weight_name, weight, 2)
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"{weight_name} [V, D] must match {hidden_name} [N, D] in D, got "
                         f"{tuple(weight.shape)} and {tuple(hidden.shape)}")
    check_device(weight_name, weight, hidden.device)
    if bias is not None:
        check_float("bias", bias, 1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape [{weight.shape[0]}], got {tuple(bias.shape)}")
        check_device("bias", bias, hidden.device)


def linear_entropy_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    backend: LinearBackend = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`entropy_logprob(hidden @ weight.T + bias, tokens)` without ever holding the [N, V] logits.

    hidden: [N, D]; weight: [V, D] (the LM head); bias: [V] or None; tokens: [N] int or None.
    Returns fp32 `(entropy[N], logprob[N] or None, lse[N])`. Differentiable w.r.t. hidden, weight
    and bias. The backward recomputes the logits per row chunk (Triton: <= 512 MiB scratch).
    backend: `auto` (`triton` on CUDA, `torch` elsewhere), `triton` (fp32 matmul logits per row chunk
    streamed through Triton row kernels), `triton_tiles` (tl.dot tiles, logits never written) or `torch`.
    """
    check_head("hidden", hidden, "weight", weight, bias)
    n, v = hidden.shape[0], weight.shape[0]
    if tokens is not None:
        check_tokens("tokens", tokens, n, v, hidden.device)
    temperature = check_temperature(temperature)
    backend = resolve_backend(backend, hidden, weight, allowed=LINEAR_BACKENDS)
    ent, lp, lse = LinearEntropyLogprobFunction.apply(hidden, weight, bias, tokens, temperature, backend)
    return ent, (lp if tokens is not None else None), lse
