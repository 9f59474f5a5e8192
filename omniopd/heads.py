"""Hidden states and LM-head weights of HF causal LMs: what the fused-head kernels take instead of logits.

A training step never builds `[tokens, V]` logits: the student, the reference and a local teacher stop at
the last (normed) hidden state, and `omniopd_kernels.linear_*` apply the head one row tile at a time.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

# Config fields of HF models whose logits are not plain `hidden @ W.T` (the fused kernels assume they are).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def last_hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """`[B, S, D]` final hidden states (after the last norm) of `model`'s decoder.

    The root module runs, so FSDP2's hooks gather and reduce its parameters as usual; its LM head runs on
    the last position only (`logits_to_keep=1`, a `[B, 1, V]` output) and the decoder's output is taken
    with a forward hook.
    """
    captured: list[torch.Tensor] = []
    caller = threading.get_ident()

    def keep(_module: nn.Module, _args: object, out: object) -> None:
        if threading.get_ident() != caller:  # another thread's forward of the same module (pipelined rollouts)
            return
        captured.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])

    handle = model.get_decoder().register_forward_hook(keep)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
              logits_to_keep=1)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"{type(model).__name__}: expected one decoder output, captured {len(captured)}")
    return captured[0]


def head_weight(model: nn.Module) -> torch.Tensor:
    """The `[V, D]` LM-head weight (the input embedding when tied), differentiable; a frozen sharded one is
    gathered.

    Raises for heads the fused kernels cannot express (a bias, soft-capped or scaled logits).
    """
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no linear LM head")
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: an LM head with a bias is not supported by the fused step")
    for name in _LOGIT_TRANSFORMS:
        value = getattr(model.config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"{type(model).__name__}: config.{name}={value} transforms the logits; the fused "
                             "step computes plain hidden @ head.T")
    weight = head.weight
    if not hasattr(weight, "full_tensor"):
        return weight
    if weight.requires_grad:
        # Gathering here would hand each rank's gradient of its own data to its shard unreduced; the root is
        # left gathered after forward instead (parallel.shard), so FSDP reduces the head's gradient.
        raise RuntimeError(f"{type(model).__name__}: the LM head is still sharded after the forward; shard the "
                           "root without reshard_after_forward (omniopd.parallel.shard does)")
    return weight.full_tensor()  # a frozen model (reference, teacher): no gradient to reduce
