"""HF `generate` backend: runs on the trainer's own model object, so a weight update needs no copy.

Log-probs come from the scores `generate` samples from (after its temperature and top-p processing),
so they describe the same distribution as vLLM's `processed_logprobs`.
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
        self.max_batch_rows = max_batch_rows  # bounds the [steps, rows, vocab] scores kept for log-probs
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
        gen_cfg = transformers.GenerationConfig(
            do_sample=not greedy, temperature=None if greedy else temperature,
            top_p=None if greedy else top_p, top_k=None if greedy else 0, max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id, bos_token_id=None,
            output_scores=True, return_dict_in_generate=True, stop_strings=stop or None)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg,
                                          tokenizer=self.tokenizer if stop else None)
        finally:
            self.model.train(was_training)
        new = out.sequences[:, width:].tolist()
        # scores[t][row] are the processed logits the t-th token was drawn from
        logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
        chosen = torch.gather(logp, 2, out.sequences[:, width:, None]).squeeze(2).tolist()
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
        named_tensors = list(named_tensors)
        own = dict(self.model.state_dict(keep_vars=True))
        unknown = sorted({name for name, _ in named_tensors} - set(own))
        if unknown:
            raise ValueError(f"update_weights: {len(unknown)} names are not parameters of the HF model, "
                             f"e.g. {unknown[:3]}")
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = own[name]
                if target.data_ptr() != tensor.data_ptr():
                    target.copy_(tensor.to(device=target.device, dtype=target.dtype))

    def close(self) -> None:
        self._closed = True
        self.model = None
