"""One rank's rollouts as a training batch: its padded tensors and its packed layout, built once.

Everything is response-aligned: a batch row is `[left-padded prompt | right-padded response]` with the
prompt `P` wide, so response column `t` is the distribution that produced response token `t`. The model
never runs on that padded layout: `pack` also lays the real tokens out without padding (`Packed`, made
from the token lists on the CPU, moved to the device once) and `response_hidden` runs the forward on it,
stopping at the last hidden state; the fused-head kernels turn those into log-probs and losses, so no
`[tokens, V]` logits exist in a step. Every consumer (student, reference, metrics) reads the stored layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omniopd import losses
from omniopd.data import Problem
from omniopd.heads import head_weight, last_hidden_states
from omniopd.rollout.padding import pad_rows
from omniopd.rollout.student import Sample
from omniopd.runlog import summed


@dataclass
class Packed:
    """A batch's real tokens packed without padding: each row holds whole sequences back to back, position
    ids restarting at 0 for each (transformers then masks attention per sequence: SDPA, FlashAttention-2)."""

    input_ids: torch.Tensor  # [R, S], S = the longest sequence
    position_ids: torch.Tensor  # [R, S]
    index: torch.Tensor  # [B, T] flat index into [R * S] of the position producing response token t (0: none)
    padding_frac: float  # share of [R, S] that is still padding


@dataclass
class Batch:
    """Padded token tensors of one rank's rollouts, their packed layout, and what produced them."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    tokens: torch.Tensor  # [B, T] response tokens (0 where padded)
    response_mask: torch.Tensor  # [B, T] real response tokens
    prompt_width: int  # P
    problems: list[Problem]  # one per row
    samples: list[Sample]  # one per row
    packed: Packed  # the layout every forward of this batch runs on

    @property
    def responses(self) -> list[list[int]]:
        return [s.token_ids for s in self.samples]


def pack(problems: list[Problem], samples: list[Sample], pad_id: int, device: torch.device) -> Batch:
    """Left-pad prompts and right-pad responses so response column t sits at P + t in every row, and pack the
    same sequences without padding; everything is built on the CPU and moved to `device` once."""
    prompts, prompt_mask = pad_rows([s.prompt_ids for s in samples], pad_id, side="left")
    responses, response_mask = pad_rows([s.token_ids for s in samples], pad_id, side="right",
                                        width=max(1, max(len(s.token_ids) for s in samples)))
    tokens = torch.where(response_mask.bool(), responses, 0)
    packed = pack_sequences([s.prompt_ids for s in samples], [s.token_ids for s in samples], pad_id,
                            width=tokens.shape[1])
    packed = Packed(packed.input_ids.to(device), packed.position_ids.to(device), packed.index.to(device),
                    packed.padding_frac)
    return Batch(torch.cat([prompts, responses], 1).to(device), torch.cat([prompt_mask, response_mask], 1).to(device),
                 tokens.to(device), response_mask.bool().to(device), prompts.shape[1], problems, samples, packed)


def pack_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int, *, width: int) -> Packed:
    """`prompt + response` sequences in first-fit-decreasing bins of the longest sequence's length (bounds
    per-row attention like padding); `width` is the batch's response width T (the index's columns)."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    size = max(lengths)
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = next((j for j, free in enumerate(room) if free >= lengths[i]), len(bins))
        if j == len(bins):
            bins.append([])
            room.append(size)
        bins[j].append(i)
        room[j] -= lengths[i]
    ids = torch.full((len(bins), size), pad_id, dtype=torch.long)
    pos = torch.zeros_like(ids)
    index = torch.zeros((len(lengths), width), dtype=torch.long)
    for r, members in enumerate(bins):
        offset = 0
        for i in members:
            n, t = lengths[i], len(responses[i])
            ids[r, offset:offset + n] = torch.tensor(list(prompts[i]) + list(responses[i]), dtype=torch.long)
            pos[r, offset:offset + n] = torch.arange(n)
            index[i, :t] = r * size + offset + (n - t) - 1 + torch.arange(t)
            offset += n
        pos[r, offset:] = torch.arange(size - offset)  # trailing padding: a sequence of its own, never read
    return Packed(ids, pos, index, 1.0 - sum(lengths) / ids.numel())


def response_hidden(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """`[B, T, D]` last hidden states at the positions that produce each response token (padded response
    positions hold an arbitrary row): the fused-head kernels turn them into log-probs without `[B, T, V]`.
    The forward runs on the packed sequences (no attention mask: positions delimit them)."""
    packed = batch.packed
    hidden = last_hidden_states(model, packed.input_ids, None, packed.position_ids)
    return hidden.reshape(-1, hidden.shape[-1])[packed.index]


def response_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """`[B, T, V]` fp32 logits of the same rows (the logits form: references and tests, not the step)."""
    return (response_hidden(model, batch) @ head_weight(model).T).float()


def model_head(model: torch.nn.Module, batch: Batch, dtype: torch.dtype) -> losses.Head:
    """The model's response rows as a fused `Head` in the compute dtype (the fp32 master head is cast, with
    its gradient flowing back to it)."""
    return losses.Head(response_hidden(model, batch).to(dtype), head_weight(model).to(dtype))


def batch_metrics(batch: Batch, rewards: torch.Tensor, logprob: torch.Tensor,
                  entropy: torch.Tensor) -> dict[str, float]:
    """The rollouts' reward, length, entropy and rollout-vs-trainer mismatch, and what the layout cost."""
    mask = batch.response_mask
    sampler = torch.zeros_like(logprob)
    for i, s in enumerate(batch.samples):
        sampler[i, :len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
    n_tok = mask.sum().clamp(min=1).item()
    real = int(batch.attention_mask.sum())  # prompt + response tokens the forward actually needed
    return {"rollout/reward_mean": rewards.mean().item(),
            "rollout/response_len_mean": mask.sum(1).float().mean().item(),
            "rollout/truncated_frac": sum(s.finish_reason == "length" for s in batch.samples) / len(batch.samples),
            "rollout/entropy_mean": (entropy * mask).sum().item() / n_tok,
            # rollout-vs-trainer log-prob mismatch (only meaningful at temperature 1, top_p 1)
            "rollout/logprob_mismatch": ((sampler - logprob).abs() * mask).sum().item() / n_tok,
            "train/forward_tokens": summed(real),
            # what padding to the longest prompt and response would have cost, and what packing left
            "train/padding_frac": 1.0 - real / batch.attention_mask.numel(),
            "train/packed_padding_frac": batch.packed.padding_frac}
