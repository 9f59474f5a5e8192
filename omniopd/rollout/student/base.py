"""The student-generator interface shared by the vLLM and HF backends.

Prompts are chat messages; both backends turn them into token ids with the tokenizer's chat template
(`add_generation_prompt=True`) here, so the trainer, vLLM and HF all see exactly the same prompt ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import torch


class GeneratorStartError(RuntimeError):
    """A backend that cannot start; the message names the cause (and the fallback, if any)."""


@dataclass
class Sample:
    """One sampled response to one prompt."""

    prompt_ids: list[int]
    token_ids: list[int]  # response tokens, including the EOS token when the model stopped on it
    text: str  # decoded response without special tokens, cut before a matched stop string
    finish_reason: str  # "stop" (EOS or stop string) | "length" (max_new_tokens reached)
    # log-prob of each token in token_ids under the distribution it was sampled from (after temperature
    # and top-p); for greedy decoding (temperature 0) under the model's unmodified distribution.
    logprobs: list[float]


class StudentGenerator(ABC):
    """Rollouts from the current student weights; `update_weights` after each optimizer step."""

    backend: str
    tokenizer: object

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, messages)

    @abstractmethod
    def generate(self, prompts: list[list[dict[str, str]]], n: int, *, temperature: float, top_p: float,
                 max_new_tokens: int, stop: list[str] | None = None) -> list[list[Sample]]:
        """`n` samples for each chat prompt: result[prompt][sample]."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Make the next `generate` use these weights (HF parameter names, the full state dict)."""

    @abstractmethod
    def close(self) -> None:
        """Release the engine; the generator cannot be used afterwards."""

    def __enter__(self) -> StudentGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat prompt, ending with the assistant's generation prompt."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    return [int(i) for i in ids]


def check_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int) -> None:
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n={n} and max_new_tokens={max_new_tokens} must both be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """`text` up to the earliest stop string (excluded), and whether one matched."""
    cut = min((i for s in stop or () if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def sampling_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
                      top_p: float) -> torch.Tensor:
    """log-prob of `tokens[i]` under the distribution both backends sample from at row `logits[i]`.

    Temperature, then top-p (smallest set of most likely tokens whose mass reaches `top_p`), in fp32;
    temperature 0 (greedy) means the unmodified distribution. The trainer-side twin of `Sample.logprobs`.
    """
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
        if top_p < 1:
            sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
            drop_sorted = torch.softmax(sorted_logits, dim=-1).cumsum(-1) <= 1 - top_p
            drop_sorted[..., -1] = False  # the most likely token always stays
            logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
