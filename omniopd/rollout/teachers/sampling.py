"""Batched sampling with per-request seeds, for the local teacher's HF path."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omniopd.rollout.padding import pad_rows


@dataclass
class Continuation:
    """One teacher continuation as tokens (the HF and the vLLM sampler both return these). Not a student
    rollout (`omniopd.rollout.student.Sample`): no prompt, text or log-probs; the teacher decodes it."""

    tokens: list[int]
    finish_reason: str  # "stop" (an end-of-sequence token) or "length"


def eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids |= set(extra) if isinstance(extra, list | tuple) else ({extra} if extra is not None else set())
    return ids


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding (pads get position 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(model, prompts: list[list[int]], n: list[int], max_tokens: list[int], temperature: list[float],
           seed: list[int | None], stop_ids: set[int], pad_id: int) -> list[list[Continuation]]:
    """`n[i]` samples continuing token list `prompts[i]`, all in one left-padded batch.

    Request i draws from its own `torch.Generator` seeded with `seed[i]` (fresh entropy when None),
    so a seeded request gets the same samples whatever else is in the batch (up to the float noise
    that batching adds to logits). Temperature 0 is greedy.
    """
    device = next(model.parameters()).device
    owner = [i for i, k in enumerate(n) for _ in range(k)]  # request of each batch row
    rows = [prompts[i] for i in owner]
    ids, mask = pad_rows(rows, pad_id, side="left")
    ids, mask = ids.to(device), mask.to(device)
    generators = []
    for s in seed:
        g = torch.Generator(device=device)
        g.manual_seed(s if s is not None else int(torch.randint(0, 2**62, (1,)).item()))
        generators.append(g)
    row_slices = []  # rows of request i: a contiguous range
    start = 0
    for k in n:
        row_slices.append(slice(start, start + k))
        start += k

    out: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    limit = [max_tokens[i] for i in owner]
    past = None
    step_ids, pos = ids, position_ids(mask)
    for step in range(max(max_tokens)):
        # Only the last position's logits are sampled from: computing the head over the whole prompt
        # costs rows x prompt x vocab floats (GBs for a batch of hinted prompts).
        result = model(input_ids=step_ids, attention_mask=mask, position_ids=pos, past_key_values=past,
                       use_cache=True, logits_to_keep=1)
        past = result.past_key_values
        logits = result.logits[:, -1, :].float()
        nxt = torch.empty(len(rows), dtype=torch.long, device=device)
        for i, sl in enumerate(row_slices):
            if temperature[i] == 0:
                nxt[sl] = logits[sl].argmax(-1)
            else:
                probs = torch.softmax(logits[sl] / temperature[i], dim=-1)
                nxt[sl] = torch.multinomial(probs, 1, generator=generators[i]).squeeze(-1)
        for r in range(len(rows)):
            if done[r]:
                continue
            token = int(nxt[r])
            if token in stop_ids:
                done[r] = True
                continue
            out[r].append(token)
            if len(out[r]) >= limit[r]:
                done[r] = True
        if all(done) or step + 1 == max(max_tokens):
            break
        step_ids = nxt.unsqueeze(-1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        pos = pos[:, -1:] + 1

    samples: list[list[Continuation]] = [[] for _ in prompts]
    for r, i in enumerate(owner):
        hit_stop = len(out[r]) < limit[r]
        samples[i].append(Continuation(out[r], "stop" if hit_stop else "length"))
    return samples
