"""Training objectives on top of the kernels: `omniopd` and the `opd`, `sft`, `rl` baselines (docs/design.md §1).

Every tensor is *response-aligned* (`[B, T]` / `[B, T, ·]`): row `t` is the distribution that produced
response token `y_t`, and `response_mask[B, T]` marks real response tokens (no prompt, padding or
post-EOS). A model's distributions come as a `Head`: hidden states `[B, T, D]` and the LM-head weight
`[V, D]` (what the trainer passes: the fused kernels never hold `[B·T, V]`), or, for callers that already
have them, logits `[B, T, V]` (a plain tensor is read as logits). Every objective returns `(loss, metrics)`:
a scalar fp32 loss with gradient to the student's hidden states and head (or logits), and a dict of floats
(loss terms, already divided by the global normalizer, and token counts are `runlog.summed`: ranks add them;
the rest are per-rank means).

Normalizer: each loss is a *sum* over tokens divided by `normalizer`, a number the trainer passes after
its one all-reduce per step. Default (`objective.normalizer = "sequences"`): the global number of
sequences in the step; alternative ("tokens"): the global number of response tokens. It never depends on
how many chunks were audited or dropped, so a step with fewer teacher answers does not weigh its
remaining chunks more (see `loss_normalizer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from omniopd.audit.target import AuditResult
from omniopd.runlog import summed
from omniopd_kernels import entropy_logprob as kernel_entropy_logprob
from omniopd_kernels import (
    linear_entropy_logprob,
    linear_logprob_kl,
    linear_omniopd_loss_terms,
    logprob_kl,
    omniopd_loss,
)


@dataclass(frozen=True)
class Head:
    """A model's next-token distributions on the response rows: `hidden[B, T, D]` with `weight[V, D]`
    (fused: logits exist one row tile at a time inside the kernels), or `logits[B, T, V]`."""

    hidden: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    @staticmethod
    def of(x: Head | torch.Tensor, name: str, b: int, t: int) -> Head:
        """`x` as a Head (a tensor is logits), checked against `[b, t]`; errors name the argument."""
        head = x if isinstance(x, Head) else Head(logits=x)
        if head.fused:
            h, w = head.hidden, head.weight
            if not isinstance(h, torch.Tensor) or h.dim() != 3 or tuple(h.shape[:2]) != (b, t):
                raise ValueError(f"{name}.hidden must have shape [{b}, {t}, D], got {getattr(h, 'shape', type(h))}")
            if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.shape[1] != h.shape[2]:
                raise ValueError(f"{name}.weight must have shape [V, {h.shape[2]}], got "
                                 f"{getattr(w, 'shape', type(w))}")
        else:
            _check_logits(name, head.logits, b, t)
        return head

    @property
    def fused(self) -> bool:
        return self.logits is None

    @property
    def vocab(self) -> int:
        return self.weight.shape[0] if self.fused else self.logits.shape[-1]

    def rows(self) -> torch.Tensor:
        """Flattened `[B·T, D]` hidden states or `[B·T, V]` logits."""
        x = self.hidden if self.fused else self.logits
        return x.reshape(-1, x.shape[-1])

    def detach(self) -> Head:
        return Head(*(None if x is None else x.detach() for x in (self.hidden, self.weight, self.logits)))


def entropy_logprob(head: Head | torch.Tensor, tokens: torch.Tensor,
                    response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact full-vocabulary `(entropy[B, T], log π(y_t)[B, T])`, fp32; differentiable through the log-prob."""
    b, t = _check_bt(tokens, response_mask)
    head = Head.of(head, "head", b, t)
    safe = _safe_tokens(tokens, response_mask)
    if head.fused:
        ent, logp, _ = linear_entropy_logprob(head.rows(), head.weight, safe)
    else:
        ent, logp, _ = kernel_entropy_logprob(head.rows(), safe)
    return ent.reshape(b, t), logp.reshape(b, t)


def _logprob_kl(head: Head, ref: Head, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token `(log π_θ(y), KL(π_ref ‖ π_θ))` over `[B·T]`, both heads of one form."""
    _same_form(head, ref)
    if head.fused:
        return linear_logprob_kl(head.rows(), head.weight, ref.rows(), ref.weight, tokens)
    return logprob_kl(head.rows(), ref.rows(), tokens)


def _same_form(head: Head, ref: Head) -> None:
    if head.fused != ref.fused:
        raise ValueError("student and reference must both be hidden states + head or both logits")
    if head.vocab != ref.vocab:
        raise ValueError(f"reference vocabulary {ref.vocab} != student's {head.vocab}")


def loss_normalizer(kind: str, response_mask: torch.Tensor) -> torch.Tensor:
    """This rank's contribution to the normalizer (sum it over ranks): sequences or response tokens."""
    if kind == "sequences":
        return torch.tensor(float(response_mask.shape[0]))
    if kind == "tokens":
        return response_mask.sum().float()
    raise ValueError(f"objective.normalizer={kind!r}: must be 'sequences' or 'tokens'")


TARGETS = ("faithful", "centred")


def audit_weights(audit: AuditResult, response_mask: torch.Tensor, *,
                  target: str = "faithful") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token `(weights[B, T], kl_mask[B, T])` from the audit's `[B, M]` tensors, on the mask's device:
    the chunk weight on the tokens of each kept chunk, 0 elsewhere; the KL mask is every response token
    outside a kept chunk (dropped chunks' tokens get the KL anchor). The one place the chunk layout becomes
    per-token. The chunk weight is π̂ (`target="faithful"`, the paper's objective: every kept chunk is pushed
    up, by how much the teacher agrees) or the advantage π̂ − π̄ (`target="centred"`: a chunk the teacher
    agrees with less than the student believes is pushed down)."""
    device = response_mask.device
    b, t = response_mask.shape
    if audit.anchors.dim() != 2 or audit.anchors.shape[0] != b:
        raise ValueError(f"audit anchors {tuple(audit.anchors.shape)} do not match the response of shape {(b, t)}")
    kept = audit.kept.to(device)
    c = audit.chunk_len
    rows = torch.arange(b, device=device)[:, None, None].expand(-1, kept.shape[1], c)[kept]  # [K, C]
    cols = (audit.anchors.to(device)[..., None] + torch.arange(c, device=device))[kept]  # [K, C]
    r, col = rows.clamp(0, b - 1), cols.clamp(0, t - 1)  # safe indices; out-of-range chunks fail `inside`
    inside = (cols >= 0) & (cols < t) & response_mask[r, col].bool()
    counts = torch.zeros(response_mask.shape, dtype=torch.int64, device=device)
    counts.index_put_((r, col), torch.ones_like(cols), accumulate=True)
    bad = ~inside.all(dim=1) | (counts[r, col] > 1).any(dim=1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"chunk (sequence {int(rows[i, 0])}, anchor {int(cols[i, 0])}, C={c}) is not inside the "
                         f"response of shape {(b, t)} or overlaps another audited chunk")
    if target not in TARGETS:
        raise ValueError(f"target={target!r}: must be one of {', '.join(TARGETS)}")
    chunk_weight = audit.pi_hat - audit.pi_bar if target == "centred" else audit.pi_hat
    weights = torch.zeros(response_mask.shape, dtype=torch.float32, device=device)
    weights[r, col] = chunk_weight.to(device=device, dtype=torch.float32)[kept][:, None].expand_as(cols)
    return weights, response_mask.bool() & (counts == 0)


def truncated_ratio(logprob: torch.Tensor, rollout_logprob: torch.Tensor, response_mask: torch.Tensor, *,
                    max_ratio: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token importance ratio `min(π_θ(y)/π_rollout(y), max_ratio)` `[B, T]` (detached, 0 on padding), for a
    policy gradient on tokens sampled by older weights (truncated importance sampling, as in IMPALA's V-trace and
    off-policy async RL trainers), with its statistics over the response tokens."""
    b, t = _check_bt(logprob, response_mask)
    if rollout_logprob.shape != (b, t):
        raise ValueError(f"rollout_logprob must have shape [{b}, {t}], got {tuple(rollout_logprob.shape)}")
    if not (math.isfinite(max_ratio) and max_ratio > 0):
        raise ValueError(f"max_ratio must be a finite number > 0, got {max_ratio}")
    mask = response_mask.bool()
    log_ratio = torch.where(mask, logprob.detach().double() - rollout_logprob.detach().double(), 0.0)
    raw = log_ratio.exp()
    ratio = torch.where(mask, raw.clamp(max=max_ratio), 0.0).float()
    values = raw[mask]
    n = values.numel()
    metrics = {"pipeline/ratio_mean": values.mean().item() if n else math.nan,
               "pipeline/ratio_min": values.min().item() if n else math.nan,
               "pipeline/ratio_max": values.max().item() if n else math.nan,
               "pipeline/ratio_truncated_frac": (values > max_ratio).double().mean().item() if n else math.nan}
    return ratio, metrics


def omniopd(head: Head | torch.Tensor, ref: Head | torch.Tensor, tokens: torch.Tensor, response_mask: torch.Tensor,
            audit: AuditResult, *, beta: float, normalizer: float | torch.Tensor,
            ratio: torch.Tensor | None = None, target: str = "faithful",
            backend: str = "auto") -> tuple[torch.Tensor, dict]:
    """OmniOPD: `(Σ_audited −ρ·w·log π_θ(y_t) + β·Σ_unaudited KL(π_ref ‖ π_θ)_t) / normalizer`, w = π̂
    (`target="faithful"`) or π̂ − π̄ (`target="centred"`, see `audit_weights`).

    head, ref: student and reference `Head`s (or logits `[B, T, V]`); tokens, response_mask: `[B, T]`.
    ratio: `truncated_ratio`'s `[B, T]` when the tokens came from older weights (a pipelined step), else ρ = 1.
    The KL term is exact over the vocabulary at each position, so it needs no correction.
    Through `omniopd_kernels.linear_omniopd_loss_terms` (fused: the summed loss and its two terms, Triton's
    gradients-in-the-forward path on CUDA) or `omniopd_loss` (logits). `backend`: the kernels'.
    """
    b, t = _check_bt(tokens, response_mask)
    head, ref = Head.of(head, "head", b, t), Head.of(ref, "ref", b, t)
    _same_form(head, ref)
    weights, kl_mask = audit_weights(audit, response_mask, target=target)
    if ratio is not None:
        if ratio.shape != (b, t):
            raise ValueError(f"ratio must have shape [{b}, {t}], got {tuple(ratio.shape)}")
        weights = weights * ratio.detach().to(weights)
    args = (_safe_tokens(tokens, response_mask), weights.reshape(-1), kl_mask.reshape(-1), float(beta))
    measured_kl = None
    if float(beta) == 0:  # the no-anchor ablation: no KL in the loss, but the drift it would bound is still measured
        with torch.no_grad():
            _, measured_kl = _logprob_kl(head.detach(), ref.detach(), args[0])
        measured_kl = measured_kl.reshape(b, t)
    if head.fused:
        # The summed loss with its two terms apart: on Triton its gradients are made inside the forward.
        total, pg, kl = linear_omniopd_loss_terms(head.rows(), head.weight, ref.rows(), ref.weight, *args,
                                                  backend=backend)
        return _omniopd_out(total, pg.item(), kl.item(), kl_mask, beta, normalizer, audit, measured_kl)
    per_token = omniopd_loss(head.rows(), ref.rows(), *args, reduction="none", backend=backend).reshape(b, t)
    # Padding rows carry weight 0 and no KL, but 0 · (−inf log-prob) would still be NaN: select, not multiply.
    per_token = torch.where(response_mask.bool(), per_token, 0.0)
    # kl_mask and the audited chunks are disjoint (padding contributes 0), so the split is exact.
    return _omniopd_out(per_token.sum(), per_token.detach()[~kl_mask].sum().item(),
                        per_token.detach()[kl_mask].sum().item(), kl_mask, beta, normalizer, audit, measured_kl)


def omniopd_linear(hidden: torch.Tensor, weight: torch.Tensor, ref_hidden: torch.Tensor, ref_weight: torch.Tensor,
                   tokens: torch.Tensor, response_mask: torch.Tensor, audit: AuditResult, *, beta: float,
                   normalizer: float | torch.Tensor) -> tuple[torch.Tensor, dict]:
    """`omniopd` from hidden states `[B, T, D]` and LM heads `[V, D]` (kept for callers of the old name)."""
    return omniopd(Head(hidden, weight), Head(ref_hidden, ref_weight), tokens, response_mask, audit, beta=beta,
                   normalizer=normalizer)


def _omniopd_out(total: torch.Tensor, pg: float, kl: float, kl_mask: torch.Tensor, beta: float,
                 normalizer: float | torch.Tensor, audit: AuditResult,
                 measured_kl: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The loss `total / normalizer` and its metrics from the policy-gradient and (β-weighted) KL sums;
    `measured_kl[B, T]`: the KL measured apart when β = 0."""
    norm = _check_normalizer(normalizer)
    loss = total / norm
    n_kl = int(kl_mask.sum())
    # per_token = β·KL on unaudited tokens: the KL itself is per_token / β, or measured apart when β = 0
    kl_sum = kl / beta if beta > 0 else measured_kl.detach().double()[kl_mask].sum().item()
    metrics = {"loss/total": summed(loss.item()), "loss/pg": summed(pg / norm), "loss/kl": summed(kl / norm),
               "kl/unaudited_mean": kl_sum / n_kl if n_kl else math.nan,
               "loss/audited_tokens": summed(float(audit.kept.sum()) * audit.chunk_len),
               "loss/kl_tokens": summed(n_kl)}
    metrics.update(audit.metrics)
    return loss, metrics


def opd(head: Head | torch.Tensor, tokens: torch.Tensor, response_mask: torch.Tensor, *,
        normalizer: float | torch.Tensor, teacher_logprobs: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None, exact: bool = False) -> tuple[torch.Tensor, dict]:
    """White-box on-policy distillation: per-token reverse KL(π_θ ‖ π_T) to a same-tokenizer teacher.

    Sampled-token form (default): advantage `a_t = log π_T(y_t) − log π_θ(y_t)` (detached) in a policy
    gradient, loss `−Σ_t a_t · log π_θ(y_t) / normalizer` (its gradient is that of the reverse KL in
    expectation over y ~ π_θ). Needs `teacher_logprobs[B, T]` (what the trainer passes) or
    `teacher_logits[B, T, V]`. `exact=True` (logits only: student and teacher logits `[B, T, V]`):
    `Σ_t Σ_v π_θ(v)(log π_θ(v) − log π_T(v)) / normalizer` in plain PyTorch, for small local setups.
    """
    b, t = _check_bt(tokens, response_mask)
    head = Head.of(head, "head", b, t)
    norm = _check_normalizer(normalizer)
    mask = response_mask.bool()
    if teacher_logits is not None:
        _check_logits("teacher_logits", teacher_logits, b, t)
        if teacher_logits.shape[-1] != head.vocab:
            raise ValueError(f"teacher_logits vocabulary {teacher_logits.shape[-1]} != student's {head.vocab}: opd "
                             "needs the same tokenizer")
    if exact:
        if teacher_logits is None or head.fused:
            raise ValueError("opd with exact=True needs student logits and teacher_logits [B, T, V]")
        logp = torch.log_softmax(head.logits.float(), dim=-1)
        logq = torch.log_softmax(teacher_logits.detach().float(), dim=-1)
        rkl = torch.where(mask, (logp.exp() * (logp - logq)).sum(-1), 0.0)  # [B, T]
        loss = rkl.sum() / norm
        return loss, {"loss/total": summed(loss.item()), "opd/reverse_kl_mean": _masked_mean(rkl.detach(), mask)}
    if teacher_logprobs is None:
        if teacher_logits is None:
            raise ValueError("opd needs teacher_logprobs [B, T] or teacher_logits [B, T, V]")
        with torch.no_grad():
            _, teacher_logprobs = entropy_logprob(teacher_logits, tokens, response_mask)
    elif teacher_logprobs.shape != (b, t):
        raise ValueError(f"teacher_logprobs must have shape [{b}, {t}], got {tuple(teacher_logprobs.shape)}")
    _, logp = entropy_logprob(head, tokens, response_mask)
    advantage = torch.where(mask, teacher_logprobs.detach().float() - logp.detach(), 0.0)
    loss = -torch.where(mask, advantage * logp, 0.0).sum() / norm
    return loss, {"loss/total": summed(loss.item()), "opd/advantage_mean": _masked_mean(advantage, mask),
                  "opd/reverse_kl_estimate": -_masked_mean(advantage, mask)}


def sft(head: Head | torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *,
        normalizer: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Token cross-entropy on teacher-written responses: `Σ_masked −log π_θ(target) / normalizer`.

    head (or logits `[B, T, V]`) aligned with `targets[B, T]`; `normalizer=None` means the number of masked
    tokens (then it equals `F.cross_entropy` over those tokens).
    """
    b, t = _check_bt(targets, mask)
    mask = mask.bool()
    norm = _check_normalizer(mask.sum() if normalizer is None else normalizer)
    _, logp = entropy_logprob(head, targets, mask)
    nll = -torch.where(mask, logp, 0.0)
    loss = nll.sum() / norm
    return loss, {"loss/total": summed(loss.item()), "sft/nll_mean": _masked_mean(nll.detach(), mask)}


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: `r − mean(group)`, optionally `/ (std(group) + eps)` (population std).

    `rewards[B]` holds consecutive groups of `group_size` samples of the same prompt.
    """
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [B], got {getattr(rewards, 'shape', type(rewards))}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
            or rewards.shape[0] % group_size:
        raise ValueError(f"group_size={group_size!r} must be an int >= 1 dividing the {rewards.shape[0]} rewards")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"rewards must be finite, got {rewards.tolist()}")
    r = rewards.detach().double().reshape(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale_std:
        adv = adv / (r.std(dim=1, unbiased=False, keepdim=True) + eps)
    return adv.reshape(-1).float()


def rl(head: Head | torch.Tensor, ref: Head | torch.Tensor, tokens: torch.Tensor, response_mask: torch.Tensor,
       rewards: torch.Tensor, *, group_size: int, beta: float, normalizer: float | torch.Tensor,
       scale_std: bool = True) -> tuple[torch.Tensor, dict]:
    """Self-exploratory RL: `(−Σ_t A_b·log π_θ(y_t) + β·Σ_t KL(π_ref ‖ π_θ)_t) / normalizer` over all
    response tokens, `A = group_advantages(rewards)`. One update per rollout batch, so the importance
    ratio is 1 and PPO-style clipping would be inert: this is the plain on-policy estimator."""
    b, t = _check_bt(tokens, response_mask)
    head, ref = Head.of(head, "head", b, t), Head.of(ref, "ref", b, t)
    if not isinstance(rewards, torch.Tensor) or rewards.shape != (b,):
        raise ValueError(f"rewards must have shape [{b}], got {getattr(rewards, 'shape', type(rewards))}")
    norm = _check_normalizer(normalizer)
    adv = group_advantages(rewards, group_size, scale_std=scale_std).to(response_mask.device)
    mask = response_mask.bool()
    # Both parts cover every response token, so take them separately (one kernel pass) for the metrics.
    logp, kl = _logprob_kl(head, ref, _safe_tokens(tokens, mask))
    pg = -torch.where(mask, adv[:, None] * logp.reshape(b, t), 0.0).sum()
    kl = torch.where(mask, kl.reshape(b, t), 0.0).sum()
    loss = (pg + float(beta) * kl) / norm
    n_tok = int(mask.sum())
    return loss, {"loss/total": summed(loss.item()), "loss/pg": summed(pg.item() / norm),
                  "loss/kl": summed(float(beta) * kl.item() / norm),
                  "kl/response_mean": kl.item() / n_tok if n_tok else math.nan,
                  "rl/reward_mean": rewards.double().mean().item(),
                  "rl/advantage_std": adv.double().std(unbiased=False).item()}


def _check_bt(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a [B, T] tensor, got {getattr(tokens, 'shape', type(tokens))}")
    if not isinstance(mask, torch.Tensor) or mask.shape != tokens.shape:
        raise ValueError(f"response_mask must have the shape of tokens {tuple(tokens.shape)}, "
                         f"got {getattr(mask, 'shape', type(mask))}")
    return tokens.shape[0], tokens.shape[1]


def _check_logits(name: str, logits: torch.Tensor, b: int, t: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != (b, t):
        raise ValueError(f"{name} must have shape [{b}, {t}, V], got {getattr(logits, 'shape', type(logits))}")


def _check_normalizer(normalizer: float | torch.Tensor) -> float:
    value = float(normalizer)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"normalizer must be a finite number > 0, got {value}")
    return value


def _safe_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flattened int64 tokens with padding (often −100 or out of vocabulary) replaced by 0; masked anyway."""
    return torch.where(mask.bool(), tokens, 0).reshape(-1).long()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    n = int(mask.sum())
    return (x.double() * mask).sum().item() / n if n else math.nan
