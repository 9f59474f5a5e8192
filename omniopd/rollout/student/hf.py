"""HF `generate` backend: runs on the trainer's own model object, so a weight update needs no copy.

Log-probs come from the scores `generate` samples from (after temperature and top-p), so they describe
the same distribution as vLLM's `processed_logprobs`. They are read one step at a time by the last logits
processor (`_ChosenLogprobs`), never by keeping `generate`'s `[steps, rows, V]` scores.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import transformers

from omniopd.rollout.student.base import Sample, StudentGenerator, check_sampling, cut_at_stop


class HFGenerator(StudentGenerator):
    """transformers `generate` over `model` (shared with the trainer when it passes its model in)."""

    backend = "hf"

    def __init__(self, model, tokenizer, *, max_batch_rows: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows  # rows per `generate` call (each holds a KV cache)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = sorted({*eos, tokenizer.eos_token_id} - {None})
        self._closed = False

    def generate(self, prompts: list[list[dict[str, str]]], n: int, *, temperature: float, top_p: float,
                 max_new_tokens: int, stop: list[str] | None = None) -> list[list[Sample]]:
        if self._closed:
            raise RuntimeError("HFGenerator.generate after close()")
        check_sampling(n, temperature, top_p, max_new_tokens)
        # n copies of each prompt as separate rows: HF refuses num_return_sequences > 1 when greedy.
        rows = [ids for ids in map(self.prompt_ids, prompts) for _ in range(n)]
        samples: list[Sample] = []
        for start in range(0, len(rows), self.max_batch_rows):
            samples += self._generate_rows(rows[start:start + self.max_batch_rows], temperature, top_p,
                                           max_new_tokens, stop)
        return [samples[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate_rows(self, rows: list[list[int]], temperature: float, top_p: float, max_new_tokens: int,
                       stop: list[str] | None) -> list[Sample]:
        width = max(map(len, rows))
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        greedy = temperature == 0
        # Every sampling knob is explicit (top_k=0: off) so defaults from the model or transformers (top_k=50)
        # cannot change the distribution behind our back.
        # Temperature and top-p are our own processors, ahead of the log-prob recorder: `generate` puts the
        # processors it builds from its config after the ones passed in, so it is given none of them.
        warpers = [] if greedy else [transformers.TemperatureLogitsWarper(temperature)] + \
            ([transformers.TopPLogitsWarper(top_p)] if top_p < 1 else [])
        recorder = _ChosenLogprobs(width)
        gen_cfg = transformers.GenerationConfig(
            do_sample=not greedy, temperature=None, top_p=None, top_k=None if greedy else 0,
            max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=self.pad_id, bos_token_id=None,
            stop_strings=stop or None)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                sequences = self.model.generate(
                    input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg,
                    logits_processor=transformers.LogitsProcessorList([*warpers, recorder]),
                    tokenizer=self.tokenizer if stop else None)
        finally:
            self.model.train(was_training)
        new = sequences[:, width:].tolist()
        chosen = recorder.finish(sequences).tolist()
        samples = []
        for prompt, toks, lps in zip(rows, new, chosen):
            length, reason = len(toks), "length"
            for t, tok in enumerate(toks):
                if tok in self.eos_ids:
                    length, reason = t + 1, "stop"
                    break
            toks = toks[:length]
            text, hit = cut_at_stop(self.tokenizer.decode(toks, skip_special_tokens=True), stop)
            if hit:  # keep tokens up to the one that completed the stop string (what vLLM returns)
                length = next(k for k in range(1, length + 1) if cut_at_stop(
                    self.tokenizer.decode(toks[:k], skip_special_tokens=True), stop)[1])
                toks, reason = toks[:length], "stop"
            samples.append(Sample(prompt_ids=prompt, token_ids=toks, text=text, finish_reason=reason,
                                  logprobs=lps[:length]))
        return samples

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        # Sharing the trainer's model (one rank), the parameters already hold the new values and nothing
        # is copied; a model of its own (e.g. beside an FSDP-sharded trainer) takes the full state dict.
        # Streams go one tensor at a time (never the whole state dict at once) and fail at an unknown name;
        # a list is checked whole first, so a bad one changes nothing.
        own = dict(self.model.state_dict(keep_vars=True))
        if isinstance(named_tensors, list | tuple):
            unknown = sorted({name for name, _ in named_tensors} - set(own))
            if unknown:
                raise ValueError(f"update_weights: {len(unknown)} names are not parameters of the HF model, "
                                 f"e.g. {unknown[:3]}")
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = own.get(name)
                if target is None:
                    raise ValueError(f"update_weights: {name!r} is not a parameter of the HF model")
                if target.data_ptr() != tensor.data_ptr():
                    target.copy_(tensor.to(device=target.device, dtype=target.dtype))

    def close(self) -> None:
        self._closed = True
        self.model = None


class _ChosenLogprobs(transformers.LogitsProcessor):
    """The last logits processor: the log-prob of each sampled token under the distribution it was drawn
    from, holding one step's `[rows, V]` log-softmax at a time.

    A call at generated length k sees the token sampled at step k - 1 in `input_ids`, so it reads that
    token's log-prob from the previous call's distribution; `finish` reads the last one.
    """

    def __init__(self, prompt_width: int):
        self.width = prompt_width
        self.chosen: list[torch.Tensor] = []  # [rows] per generated position
        self.last: torch.Tensor | None = None  # log-softmax of the latest step, [rows, V]

    def _read(self, tokens: torch.Tensor) -> None:
        self.chosen.append(self.last.gather(1, tokens[:, None]).squeeze(1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] - self.width != len(self.chosen) + (self.last is not None):
            raise RuntimeError("HF generate called the log-prob recorder out of step order")
        if self.last is not None:
            self._read(input_ids[:, -1])
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """`[rows, new tokens]` log-probs of `sequences[:, prompt_width:]`."""
        new = sequences.shape[1] - self.width
        if len(self.chosen) < new and self.last is not None:
            self._read(sequences[:, self.width + len(self.chosen)])
        self.last = None
        if len(self.chosen) < new:
            raise RuntimeError(f"HF generate produced {new} tokens but scored {len(self.chosen)}")
        if not new:
            return torch.zeros((sequences.shape[0], 0))
        return torch.stack(self.chosen[:new], dim=1)
