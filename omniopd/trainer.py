"""One OmniOPD training step, top to bottom (docs/design.md §1), and the loop around it.

    rollout -> trainer forward (entropy, log-probs) -> forks -> teacher continuations -> similarity
    -> Dirichlet targets -> loss -> backward -> clip -> optimizer step -> weight hot-swap

Everything is response-aligned: a batch row is `[left-padded prompt | right-padded response]` with the
prompt `P` wide, so the model's position `P - 1 + t` produced response token `t`. The forward itself runs
on the sequences packed without padding (`pack_sequences`) and stops at the last hidden state: log-probs,
entropies and every loss come from the fused-head kernels, so no `[tokens, V]` logits exist in a step.
The student keeps fp32 master weights and computes in `model.dtype`. Parallelism (`parallel.py`),
checkpoints (`checkpoint.py`) and logging (`runlog.py`) live beside this file; this file only decides
what happens in which order.

With `train.overlap` (omniopd) the teacher leaves the critical path: a no-grad entropy pass right after
generation picks the forks, their requests go out asynchronously, the student's grad forward and the reference
forward run while they are in flight, and only the loss waits. `train.pipeline=1` also produces step k+1's
rollouts, forks and teacher answers while step k trains (the machinery is in `pipeline.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omniopd import assets, checkpoint, losses, parallel, profiles
from omniopd.audit import build_forks, get_similarity, num_chunks_at, pick_anchors, sample_seeds, score_forks
from omniopd.config import Config
from omniopd.data import Problem, PromptStream, load_split, student_messages, teacher_messages
from omniopd.eval import harness
from omniopd.eval.mathgrade import grade_math
from omniopd.heads import head_weight, last_hidden_states
from omniopd.pipeline import Background, Prepared, StreamedScores
from omniopd.rollout.padding import pad_rows
from omniopd.rollout.student import Sample, build_generator
from omniopd.rollout.student.weights import full_tensors
from omniopd.rollout.teachers import TeacherRequest, TeacherResult, build_teacher, resolve_cache_path
from omniopd.runlog import RunLog, combine_ranks, maximum, plot_metrics, summed


@dataclass
class Batch:
    """Padded token tensors of one rank's rollouts, plus what produced them."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    tokens: torch.Tensor  # [B, T] response tokens (0 where padded)
    response_mask: torch.Tensor  # [B, T] real response tokens
    prompt_width: int  # P
    problems: list[Problem]  # one per row
    samples: list[Sample]  # one per row

    @property
    def responses(self) -> list[list[int]]:
        return [s.token_ids for s in self.samples]


def pack(problems: list[Problem], samples: list[Sample], pad_id: int, device: torch.device) -> Batch:
    """Left-pad prompts and right-pad responses so response column t sits at P + t in every row."""
    prompts, prompt_mask = pad_rows([s.prompt_ids for s in samples], pad_id, side="left")
    responses, response_mask = pad_rows([s.token_ids for s in samples], pad_id, side="right",
                                        width=max(1, max(len(s.token_ids) for s in samples)))
    tokens = torch.where(response_mask.bool(), responses, 0)
    return Batch(torch.cat([prompts, responses], 1).to(device), torch.cat([prompt_mask, response_mask], 1).to(device),
                 tokens.to(device), response_mask.bool().to(device), prompts.shape[1], problems, samples)


@dataclass
class Packed:
    """A batch's real tokens packed without padding: each row holds whole sequences back to back, position
    ids restarting at 0 for each (transformers then masks attention per sequence: SDPA, FlashAttention-2)."""

    input_ids: torch.Tensor  # [R, S], S = the longest sequence
    position_ids: torch.Tensor  # [R, S]
    index: torch.Tensor  # [B, T] flat index into [R * S] of the position producing response token t (0: none)
    padding_frac: float  # share of [R, S] that is still padding


def pack_sequences(batch: Batch, pad_id: int) -> Packed:
    """First-fit-decreasing bins of the longest sequence's length (bounds per-row attention like padding)."""
    mask = batch.attention_mask.bool().cpu()
    lengths = mask.sum(1).tolist()
    width = max(lengths)
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = next((j for j, free in enumerate(room) if free >= lengths[i]), len(bins))
        if j == len(bins):
            bins.append([])
            room.append(width)
        bins[j].append(i)
        room[j] -= lengths[i]
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    pos = torch.zeros_like(ids)
    index = torch.zeros(batch.tokens.shape, dtype=torch.long)
    responses = batch.response_mask.sum(1).tolist()
    for r, members in enumerate(bins):
        offset = 0
        for i in members:
            n, t = lengths[i], responses[i]
            ids[r, offset:offset + n] = batch.input_ids[i].cpu()[mask[i]]
            pos[r, offset:offset + n] = torch.arange(n)
            index[i, :t] = r * width + offset + (n - t) - 1 + torch.arange(t)
            offset += n
        pos[r, offset:] = torch.arange(width - offset)  # trailing padding: a sequence of its own, never read
    device = batch.input_ids.device
    return Packed(ids.to(device), pos.to(device), index.to(device), 1.0 - sum(lengths) / ids.numel())


def response_hidden(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """`[B, T, D]` last hidden states at the positions that produce each response token (padded response
    positions hold an arbitrary row): the fused-head kernels turn them into log-probs without `[B, T, V]`.
    The forward runs on the packed sequences (no attention mask: positions delimit them)."""
    packed = pack_sequences(batch, pad_id=0)
    hidden = last_hidden_states(model, packed.input_ids, None, packed.position_ids)
    return hidden.reshape(-1, hidden.shape[-1])[packed.index]


def response_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """`[B, T, V]` fp32 logits of the same rows (the logits form: references and tests, not the step)."""
    return (response_hidden(model, batch) @ head_weight(model).T).float()


def model_head(model: torch.nn.Module, batch: Batch, dtype: torch.dtype) -> losses.Head:
    """The model's response rows as a fused `Head` in the compute dtype (the fp32 master head is cast, with
    its gradient flowing back to it)."""
    return losses.Head(response_hidden(model, batch).to(dtype), head_weight(model).to(dtype))


def fork_requests(forks: list, problems: list[Problem], cfg: Config, step: int, rank: int) -> list[TeacherRequest]:
    """One teacher request per fork: N continuations of the response text before the chunk."""
    # The step is in the seed (and so in the cache key): a prefix seen again, e.g. every anchor-0 fork's
    # prompt-only prefix, gets fresh votes each step; still deterministic, so a resume reproduces it.
    return [TeacherRequest(
        messages=teacher_messages(problems[f.seq], cfg.data.system_prompt, cfg.teacher.hint),
        prefix=f.prefix_text, n=cfg.audit.num_continuations, max_tokens=2 * cfg.audit.chunk_len,
        temperature=cfg.teacher.temperature, seed=stable_seed(cfg.train.seed, step, problems[f.seq].id, f.prefix_text),
        key=f"step {step} rank {rank} seq {f.seq} anchor {f.anchor}") for f in forks]


def teacher_sample(prompt_ids: list[int], text: str, tokenizer: Any, max_new_tokens: int) -> Sample:
    """sft: a teacher-written response as a training row. EOS is appended only when the teacher stopped on its
    own (fewer than `max_new_tokens` tokens); a cut-off text stays cut off, so the student is never taught to
    stop mid-sentence."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < max_new_tokens:
        ids, finish = ids + [tokenizer.eos_token_id], "stop"
    else:
        ids, finish = ids[:max_new_tokens], "length"
    return Sample(list(prompt_ids), ids, text, finish, [0.0] * len(ids))


def stable_seed(*parts: object) -> int:
    """A seed that depends only on `parts` (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


class NonFiniteError(RuntimeError):
    pass


class TeacherDeadError(RuntimeError):
    """Every teacher request failed for `teacher.max_failed_steps` steps in a row; carries the last error."""


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg.validate()  # a config changed in place after construction is checked here too
        self.dist = parallel.init(cfg.parallel)
        self.out = Path(cfg.log.dir)
        torch.manual_seed(cfg.train.seed)
        device = self.dist.device

        # Models. The student holds fp32 master weights (AdamW state follows them) and computes in
        # `model.dtype`: FSDP2's mixed-precision policy, or autocast with parallel.fsdp=false on one rank.
        # The frozen reference (the KL anchor of omniopd and rl; sft and opd have none) is held in the compute dtype.
        self.compute_dtype = getattr(torch, cfg.model.dtype)
        self.student_path = assets.student_path(cfg.model.student)
        self.model, self.tokenizer = assets.load_student(self.student_path, "float32", str(device))
        self.ref_model = None
        if cfg.objective.name in ("omniopd", "rl"):
            self.ref_model, _ = assets.load_student(cfg.model.reference or self.student_path, cfg.model.dtype,
                                                    str(device))
            self.ref_model.requires_grad_(False).eval()
        checkpointing = cfg.model.activation_checkpointing
        if checkpointing if checkpointing is not None else device.type == "cuda":
            self.model.gradient_checkpointing_enable()
        # FSDP2 with several ranks, and with one when computing below fp32: its mixed-precision policy keeps
        # the whole forward (residual stream included) in the compute dtype, which autocast does not.
        self.sharded = cfg.parallel.fsdp and (self.dist.world_size > 1 or self.compute_dtype != torch.float32)
        if self.sharded:
            parallel.shard(self.model, mixed_precision=self.compute_dtype != torch.float32)
            if self.ref_model is not None:
                parallel.shard(self.ref_model, mixed_precision=False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           weight_decay=cfg.optim.weight_decay)
        warmup = cfg.optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

        # Data: every rank walks the same global order and takes its slice of each batch.
        self.train_set = load_split(cfg.data.train, cfg.data, "train")
        self.eval_set = load_split(cfg.data.eval, cfg.data, "eval")
        self.stream = PromptStream(self.train_set, seed=cfg.train.seed)
        self.step = 0
        self.nonfinite_steps = 0
        self.teacher_failed_steps, self.teacher_last_error = 0, ""  # consecutive all-failed teacher steps
        self._stop_signals: _StopSignals | None = None  # installed by `with Trainer(...)`
        self._prepared: Prepared | None = None  # train.pipeline: the next step's batch, its teacher in flight

        # Rollouts and teacher. The HF backend shares the trainer's weights unless they are sharded.
        # vLLM samples in the trainer's dtype, so rollout log-probs match the trainer's (sharded runs pass
        # no model to read it from). Under torchrun every rank builds its own engine here, after the
        # process group and FSDP, at the same point (vLLM joins the group: a collective), then waits.
        gen_cfg = dataclasses.replace(cfg.generation, dtype=cfg.model.dtype) if cfg.generation.dtype == "auto" \
            else cfg.generation
        # On CPU the engines compute with the trainer's threads (vLLM would drop its own to 1), pipelined too:
        # the pipeline bench measured its overlap so.
        serving = torch.get_num_threads()
        self.generator = build_generator(gen_cfg, self.student_path, tokenizer=self.tokenizer,
                                         hf_model=None if self.sharded else self.model, serving_threads=serving)
        parallel.barrier()
        self.teacher = build_teacher(cfg.teacher, cache_path=self._rank_cache(), serving_threads=serving,
                                     tokenizer_path=cfg.teacher.tokenizer or None, dtype=cfg.model.dtype)
        self.similarity = get_similarity(cfg.audit.similarity, trim=cfg.audit.trim, embedder=cfg.audit.embedder) \
            if cfg.objective.name == "omniopd" else None
        self.log = RunLog(cfg, self.out, active=self.dist.is_main, total_steps=cfg.train.steps, start_step=0)
        self._resume()

    def log_early(self, message: str) -> None:
        """A notice before the run log exists (rank 0 only)."""
        if self.dist.is_main:
            print(f"omniopd: {message}", flush=True)

    # ------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, dict[str, float]]:
        cfg = self.cfg
        summary: dict[str, dict[str, float]] = {}
        if cfg.train.eval_before and self.step == 0:
            summary["before"] = self.evaluate("before")
            self.log.print(f"held-out accuracy before training: {summary['before']['eval/accuracy']:.3f}")
            self.log.log(0, summary["before"])
        try:
            while self.step < cfg.train.steps:
                if self._stop_requested():
                    raise KeyboardInterrupt
                metrics = self.train_step()
                self.step += 1
                self.log.log(self.step, metrics)
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < cfg.train.steps:
                    self.save()
                every = cfg.train.eval_every
                if every and self.step % every == 0 and not (self.step == cfg.train.steps and cfg.train.eval_after):
                    held_out = self.evaluate(f"step{self.step}")
                    self.log.print(f"held-out accuracy at step {self.step}: {held_out['eval/accuracy']:.3f}")
                    self.log.log(self.step, held_out)
            if self._stop_requested():  # a signal during the last step
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.log.print(f"interrupted at step {self.step}: saving a checkpoint before exiting")
            self.save()
            raise
        self.save()
        if cfg.train.eval_after:
            summary["after"] = self.evaluate("after")
            self.log.print(f"held-out accuracy after training: {summary['after']['eval/accuracy']:.3f}")
            self.log.log(self.step, summary["after"])
        summary["teacher"] = {k: v for k, v in self.teacher.usage().items() if isinstance(v, int | float)}
        summary["differences_from_paper"] = profiles.differences(cfg)  # what this run ran unlike the paper
        self.finish(summary)
        return summary

    def train_step(self) -> dict[str, float]:
        cfg, timer = self.cfg, _Timer()
        self.model.train()
        if cfg.objective.name == "omniopd" and (cfg.train.overlap or cfg.train.pipeline):
            return self._overlapped_step(timer)
        # 1. Roll out: this rank's slice of the global batch, n samples each, from the current weights.
        problems = self._next_problems()
        if cfg.objective.name == "sft":  # the student does not sample: it trains on teacher-written responses
            with timer("teacher"):
                rows, results = self._teacher_responses(problems)
            self._check_teacher(results)
            if parallel.all_reduce_sum([float(not rows)])[0] > 0:
                return self._skip_without_teacher_rows(results, timer)
        else:
            with timer("generate"):
                rows = self._roll_out(problems)
        batch, rewards, normalizer = self._pack(rows)

        # 2. Trainer forward, stopped at the last hidden state: exact full-vocabulary entropy and log-prob of
        #    every response token through the fused head (no [B, T, V] anywhere in the step).
        with timer("forward"):
            with self._compute():
                head = model_head(self.model, batch, self.compute_dtype)
            with torch.no_grad():
                entropy, logprob = losses.entropy_logprob(head.detach(), batch.tokens, batch.response_mask)
                ref = model_head(self.ref_model, batch, self.compute_dtype) if self.ref_model is not None else None
        metrics = self._batch_metrics(batch, rewards, logprob, entropy)

        # 3-6. The objective (forks, teacher, similarity and targets for omniopd).
        if cfg.objective.name == "omniopd":
            loss, obj = self._omniopd_loss(batch, head, ref, entropy, logprob, normalizer, timer)
        elif cfg.objective.name == "opd":
            with timer("teacher"):
                teacher_logprobs = self._teacher_logprobs(batch)
            with timer("loss"):
                loss, obj = losses.opd(head, batch.tokens, batch.response_mask, normalizer=normalizer,
                                       teacher_logprobs=teacher_logprobs)
        elif cfg.objective.name == "sft":
            with timer("loss"):
                loss, obj = losses.sft(head, batch.tokens, batch.response_mask, normalizer=normalizer)
        else:  # rl
            with timer("loss"):
                loss, obj = losses.rl(head, ref, batch.tokens, batch.response_mask, rewards.to(batch.tokens.device),
                                      group_size=cfg.generation.n, beta=cfg.objective.rl_beta, normalizer=normalizer)
        metrics.update(obj)
        return self._update(loss, batch, metrics, timer)

    def _overlapped_step(self, timer: _Timer) -> dict[str, float]:
        """omniopd with the teacher off the critical path. The forks come from a no-grad entropy pass right after
        generation and their requests go out at once; the student's grad forward and the reference forward run
        while they are in flight; only the loss waits. With train.pipeline=1 the next step's rollouts are generated
        on a thread meanwhile, and their forks picked and sent before this step's update (`_produce`): weights one
        step old when trained on, so a truncated importance ratio corrects the policy-gradient term."""
        cfg = self.cfg
        prepared, self._prepared = self._prepared, None
        if prepared is None:  # the first step, or overlap without pipelining: produce it now
            problems = self._next_problems()
            with timer("generate"):
                rows = self._roll_out(problems)
            prepared = self._prepare(rows, self.step, timer)
        producer = None
        if cfg.train.pipeline and self.step + 1 < cfg.train.steps:
            problems, step = self._next_problems(), self.step + 1
            producer = Background(lambda: self._produce(problems, step, timer), "omniopd-rollouts")
        try:
            return self._train_prepared(prepared, producer, timer)
        except BaseException:
            if producer is not None:
                producer.wait()  # never leave a thread generating under an engine about to close
            raise

    def _train_prepared(self, prepared: Prepared, producer: Background | None, timer: _Timer) -> dict[str, float]:
        cfg = self.cfg
        batch = prepared.batch
        metrics = self._batch_metrics(batch, prepared.rewards, prepared.logprob, prepared.entropy)

        # 2. The student's grad forward (its graph kept for the loss) and the reference, during the teacher wait.
        with timer("forward"):
            with self._compute():
                head = model_head(self.model, batch, self.compute_dtype)
            with torch.no_grad():
                ref = model_head(self.ref_model, batch, self.compute_dtype)
                ratio = None
                if cfg.train.pipeline:
                    _, logprob = losses.entropy_logprob(head.detach(), batch.tokens, batch.response_mask)
                    ratio, stats = losses.truncated_ratio(logprob, prepared.logprob, batch.response_mask,
                                                          max_ratio=cfg.train.max_ratio)
                    metrics.update(stats)
                    metrics["pipeline/staleness"] = float(self.step - prepared.version)
        # 5. Each fork is scored as its answer arrives; the teacher's step deadline bounds this wait.
        scores = StreamedScores(self.similarity, prepared.forks, cfg.audit.num_continuations)
        with timer("teacher_wait"):
            results = scores.collect(prepared.job)
        timer.seconds["teacher_wait"] -= scores.seconds
        timer.seconds["score"] = scores.seconds
        metrics["time/teacher_s"] = prepared.job.seconds  # latency from submit to the last answer

        # 5-6. Targets and the loss (the grad forward's graph is used once, here).
        loss, obj = self._audited_loss(batch, head, ref, prepared.anchors, prepared.forks, results, prepared.entropy,
                                       prepared.logprob, prepared.normalizer, prepared.num_chunks, timer, ratio,
                                       similarity=scores)
        metrics.update(obj)

        def produce_next() -> None:  # before the optimizer step: the next batch's forks see these weights
            made = producer.join()
            self._prepared = made if isinstance(made, Prepared) else self._prepare(made, self.step + 1, timer)

        return self._update(loss, batch, metrics, timer, before_step=produce_next if producer else None)

    def _produce(self, problems: list[Problem], step: int, timer: _Timer) -> Prepared | list[tuple[Problem, Sample]]:
        """The next step's batch, on the producer thread. One unsharded rank also picks its forks and sends them
        to the teacher there, while this step's forward and backward run (the weights change only after the
        producer is joined); sharded or multi-rank forwards issue collectives, so those ranks do that part on the
        main thread, just before the optimizer step."""
        with timer("generate"):
            rows = self._roll_out(problems)
        return self._prepare(rows, step, timer) if not self.sharded and self.dist.world_size == 1 else rows

    def _next_problems(self) -> list[Problem]:
        """This rank's slice of the next global batch."""
        return self.stream.next_batch(self.cfg.train.batch_size)[self.dist.rank::self.dist.world_size]

    def _roll_out(self, problems: list[Problem]) -> list[tuple[Problem, Sample]]:
        """n samples per problem from the generator's current weights."""
        cfg = self.cfg
        grouped = self.generator.generate([student_messages(p, cfg.data.system_prompt) for p in problems],
                                          cfg.generation.n, temperature=cfg.generation.temperature,
                                          top_p=cfg.generation.top_p, max_new_tokens=cfg.generation.max_new_tokens)
        return [(p, s) for p, group in zip(problems, grouped) for s in group]

    def _pack(self, rows: list[tuple[Problem, Sample]]) -> tuple[Batch, torch.Tensor, float]:
        """The batch, its rewards and the global loss normalizer."""
        cfg = self.cfg
        batch = pack([p for p, _ in rows], [s for _, s in rows], self.tokenizer.pad_token_id, self.dist.device)
        rewards = torch.tensor([float(grade_math(s.text, p.answer)) for p, s in rows])
        normalizer = float(parallel.all_reduce_sum([losses.loss_normalizer(cfg.objective.normalizer,
                                                                           batch.response_mask).item()])[0])
        return batch, rewards, normalizer

    def _prepare(self, rows: list[tuple[Problem, Sample]], step: int, timer: _Timer) -> Prepared:
        """Pack the rollouts, pick the forks with a no-grad entropy pass at the current weights, send the
        teacher requests (they answer in the background)."""
        cfg = self.cfg
        batch, rewards, normalizer = self._pack(rows)
        with timer("anchors"):
            with torch.no_grad(), self._compute():
                head = model_head(self.model, batch, self.compute_dtype)
            with torch.no_grad():
                entropy, logprob = losses.entropy_logprob(head, batch.tokens, batch.response_mask)
            m = num_chunks_at(step, cfg.audit)
            anchors = pick_anchors(entropy, batch.response_mask, m, cfg.audit,
                                   sample_seeds(cfg.train.seed, step, [p.id for p in batch.problems]))
            forks = build_forks(batch.responses, anchors.cpu(), self.tokenizer, cfg.audit.chunk_len)
        with timer("teacher_submit"):  # an API teacher returns at once; a local one answers here
            job = self.teacher.submit(fork_requests(forks, batch.problems, cfg, step, self.dist.rank))
        return Prepared(batch, rewards, normalizer, entropy, logprob, anchors, forks, m, job, version=self.step)

    def _batch_metrics(self, batch: Batch, rewards: torch.Tensor, logprob: torch.Tensor,
                       entropy: torch.Tensor) -> dict[str, float]:
        metrics = self._rollout_metrics(batch, rewards, logprob, entropy)
        real = int(batch.attention_mask.sum())  # prompt + response tokens the forward actually needed
        metrics.update({"train/forward_tokens": summed(real),
                        # what padding to the longest prompt and response would have cost, and what packing left
                        "train/padding_frac": 1.0 - real / batch.attention_mask.numel(),
                        "train/packed_padding_frac": pack_sequences(batch, pad_id=0).padding_frac})
        return metrics

    def _update(self, loss: torch.Tensor, batch: Batch, metrics: dict[str, float], timer: _Timer,
                before_step: Callable[[], None] | None = None) -> dict[str, float]:
        """7-8. Backward, clip, optimizer step, weight swap; `before_step` runs just before the weights change."""
        cfg = self.cfg
        # 7. Backward, clip, step (skipped, and counted, when anything is non-finite on any rank).
        with timer("backward_step"):
            # The loss is already divided by the global normalizer, and FSDP averages gradients over ranks:
            # scaling by the world size turns that mean into the sum the global loss needs.
            (loss * self.dist.world_size if self.sharded else loss).backward()
            grad_norm = self._clip()
            finite = parallel.all_reduce_sum([float(not (math.isfinite(loss.item()) and math.isfinite(grad_norm)))])
        if before_step is not None:
            before_step()
        with timer("backward_step"):
            if finite[0] > 0:
                self.optimizer.zero_grad(set_to_none=True)
                self.nonfinite_steps += 1
                metrics["train/skipped_nonfinite"] = maximum(1.0)  # every rank skips together
                self.log.print(f"step {self.step}: non-finite loss or gradient, step skipped "
                               f"({self.nonfinite_steps}/{cfg.train.max_nonfinite_steps})")
                if self.nonfinite_steps >= cfg.train.max_nonfinite_steps:
                    raise NonFiniteError(f"{self.nonfinite_steps} non-finite steps: stopping (see "
                                         f"{self.out / 'metrics.jsonl'})")
            else:
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        # 8. Hot-swap the new weights into the running generator.
        with timer("swap"):
            self._sync_generator()

        usage = self.teacher.usage()  # cumulative over the run (this rank's teacher)
        metrics.update({"train/grad_norm": grad_norm, "train/lr": self.scheduler.get_last_lr()[0],
                        "teacher/cost_usd_total": summed(usage["cost_usd"]),
                        "teacher/cache_hits_total": summed(usage["cache_hits"]),
                        "teacher/completion_tokens_total": summed(usage["completion_tokens"])})
        metrics.update(timer.metrics(tokens=int(batch.response_mask.sum())))
        return self._reduce(metrics)

    def _omniopd_loss(self, batch: Batch, head: losses.Head, ref: losses.Head, entropy: torch.Tensor,
                      logprob: torch.Tensor, normalizer: float, timer: _Timer) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        # 3. Forks: up to M non-overlapping peak-entropy chunks per response.
        m = num_chunks_at(self.step, cfg.audit)
        anchors = pick_anchors(entropy, batch.response_mask, m, cfg.audit,
                               sample_seeds(cfg.train.seed, self.step, [p.id for p in batch.problems]))
        forks = build_forks(batch.responses, anchors.cpu(), self.tokenizer, cfg.audit.chunk_len)
        # 4. Speculative verification: N teacher continuations of the prefix before each chunk.
        requests = fork_requests(forks, batch.problems, cfg, self.step, self.dist.rank)
        with timer("teacher"):
            results = self.teacher.generate(requests)
        return self._audited_loss(batch, head, ref, anchors, forks, results, entropy, logprob, normalizer, m, timer)

    def _audited_loss(self, batch: Batch, head: losses.Head, ref: losses.Head, anchors: torch.Tensor, forks: list,
                      results: list[TeacherResult], entropy: torch.Tensor, logprob: torch.Tensor, normalizer: float,
                      m: int, timer: _Timer, ratio: torch.Tensor | None = None,
                      similarity: Callable[..., torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        self._check_teacher(results)
        # 5. Similarity and the Dirichlet-Multinomial target; chunks with < N texts are dropped, counted.
        with timer("score"):
            audit = score_forks(anchors, forks, [r.texts for r in results], logprob, similarity or self.similarity,
                                n=cfg.audit.num_continuations, alpha=cfg.audit.alpha, chunk_len=cfg.audit.chunk_len,
                                entropy=entropy, response_mask=batch.response_mask)
        # 6. Chunk-weighted policy gradient + KL anchor to the base model on every other token.
        with timer("loss"):
            loss, metrics = losses.omniopd(head, ref, batch.tokens, batch.response_mask, audit,
                                           beta=cfg.objective.beta, normalizer=normalizer, ratio=ratio,
                                           target=cfg.objective.target)
        metrics["audit/num_chunks_m"] = float(m)
        metrics["teacher/failed_requests"] = summed(sum(not r.ok for r in results))
        return loss, metrics

    def _check_teacher(self, results: list[TeacherResult]) -> None:
        """A dead teacher is loud: stop after `teacher.max_failed_steps` steps in a row in which every
        request failed on every rank (ranks decide together, so all of them stop at the same step)."""
        ok, total = parallel.all_reduce_sum([float(sum(r.ok for r in results)), float(len(results))]).tolist()
        if total == 0:
            return
        if ok > 0:
            self.teacher_failed_steps = 0
            return
        self.teacher_failed_steps += 1
        self.teacher_last_error = next((r.error for r in results if r.error), self.teacher_last_error)
        limit = self.cfg.teacher.max_failed_steps
        self.log.print(f"step {self.step}: all {int(total)} teacher requests failed "
                       f"({self.teacher_failed_steps}/{limit}); last error: {self.teacher_last_error}")
        if self.teacher_failed_steps >= limit:
            raise TeacherDeadError(f"the teacher failed every request for {self.teacher_failed_steps} steps in a "
                                   f"row: stopping. Last error: {self.teacher_last_error}")

    # ------------------------------------------------------------------------------------------
    def _teacher_responses(self, problems: list[Problem]) -> tuple[list[tuple[Problem, Sample]], list[TeacherResult]]:
        """sft: the teacher writes whole responses (as many as the student's rollouts would be), and the raw
        results (a failed request contributes no row; `_check_teacher` counts it)."""
        cfg = self.cfg
        requests = [TeacherRequest(messages=teacher_messages(p, cfg.data.system_prompt, cfg.teacher.hint), prefix="",
                                   n=cfg.generation.n, max_tokens=cfg.generation.max_new_tokens,
                                   temperature=cfg.teacher.temperature, seed=stable_seed(cfg.train.seed, p.id, "sft"),
                                   key=f"sft {p.id}") for p in problems]
        results = self.teacher.generate(requests)
        rows = []
        for p, result in zip(problems, results):
            prompt_ids = self.generator.prompt_ids(student_messages(p, cfg.data.system_prompt))
            for text in result.texts or []:
                rows.append((p, teacher_sample(prompt_ids, text, self.tokenizer, cfg.generation.max_new_tokens)))
        return rows, results

    def _skip_without_teacher_rows(self, results: list[TeacherResult], timer: _Timer) -> dict[str, float]:
        """sft with no teacher response on some rank: every rank skips the update together (a rank with no rows
        cannot join the others' forward and backward), and the step counts as skipped. A teacher that stays dead
        stops the run in `_check_teacher`."""
        self.log.print(f"step {self.step}: the teacher answered none of some rank's sft requests; step skipped")
        metrics = {"train/skipped_no_teacher": maximum(1.0),
                   "teacher/failed_requests": summed(sum(not r.ok for r in results))}
        metrics.update(timer.metrics(tokens=0))
        return self._reduce(metrics)

    def _teacher_logprobs(self, batch: Batch) -> torch.Tensor:
        """opd: the white-box teacher's log-probs `[B, T]` of the student's tokens, in the teacher's own context
        (from its hidden states through the fused head, in its dtype)."""
        if not hasattr(self.teacher, "token_logprobs"):
            raise RuntimeError("objective.name=opd needs teacher.kind=local (a teacher that exposes log-probs)")
        cfg = self.cfg
        prompts = [self.generator.prompt_ids(teacher_messages(p, cfg.data.system_prompt, cfg.teacher.hint))
                   for p in batch.problems]
        teacher_batch = pack(batch.problems, [Sample(p, s.token_ids, s.text, s.finish_reason, s.logprobs)
                                              for p, s in zip(prompts, batch.samples)],
                             self.tokenizer.pad_token_id, self.dist.device)
        logp = self.teacher.token_logprobs(teacher_batch.input_ids, teacher_batch.attention_mask,
                                           start=teacher_batch.prompt_width)
        return logp.to(self.dist.device)

    def _compute(self) -> contextlib.AbstractContextManager:
        """The student's forward in the compute dtype: FSDP2 casts sharded weights itself; unsharded fp32
        master weights go through autocast (a no-op when the compute dtype is float32)."""
        if self.sharded or self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.compute_dtype)

    def _clip(self) -> float:
        if self.cfg.optim.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return float(norm)

    def _sync_generator(self) -> None:
        # One gathered tensor at a time (full_tensors), so no rank holds the state dict twice.
        if self.sharded or self.generator.backend != "hf":
            self.generator.update_weights(full_tensors(self.model))

    def _rollout_metrics(self, batch: Batch, rewards: torch.Tensor, logprob: torch.Tensor,
                         entropy: torch.Tensor) -> dict[str, float]:
        mask = batch.response_mask
        sampler = torch.zeros_like(logprob)
        for i, s in enumerate(batch.samples):
            sampler[i, :len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
        n_tok = mask.sum().clamp(min=1)
        return {"rollout/reward_mean": rewards.mean().item(),
                "rollout/response_len_mean": mask.sum(1).float().mean().item(),
                "rollout/truncated_frac": sum(s.finish_reason == "length" for s in batch.samples) / len(batch.samples),
                "rollout/entropy_mean": (entropy * mask).sum().item() / n_tok.item(),
                # rollout-vs-trainer log-prob mismatch (only meaningful at temperature 1, top_p 1)
                "rollout/logprob_mismatch": ((sampler - logprob).abs() * mask).sum().item() / n_tok.item()}

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric combined over ranks as its producer declared it (`runlog.Metric`), in one collective."""
        return combine_ranks(parallel.all_gather_object(metrics))

    # ------------------------------------------------------------------------------------------
    def evaluate(self, tag: str) -> dict[str, float]:
        """Greedy held-out accuracy, mean response length and repetition through the eval harness (the same
        prompts, grading and summary as `python -m omniopd.eval`); graded samples go to eval_<tag>.jsonl."""
        cfg = self.cfg
        problems = self.eval_set[:cfg.train.eval_size or None][self.dist.rank::self.dist.world_size]
        self.model.eval()
        _, records = harness.evaluate(self.generator, problems, "math", k=1, temperature=0.0, top_p=1.0,
                                      max_new_tokens=cfg.generation.max_new_tokens,
                                      system_prompt=cfg.data.system_prompt)
        records = [r for part in parallel.all_gather_object(records) for r in part]
        if self.dist.is_main:
            with (self.out / f"eval_{tag}.jsonl").open("w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        [summary] = harness.summarize(records).values()  # one held-out set: one benchmark
        return {"eval/accuracy": summary["pass@1"], "eval/response_len_mean": summary["mean_tokens"],
                "eval/repetition_mean": summary["mean_repetition"]}

    def save(self) -> Path:
        stream = self.stream.state_dict()
        if self._prepared is not None:  # train.pipeline: the next batch is drawn, not trained on; a resume redraws it
            stream["position"] -= self.cfg.train.batch_size
        extra = {"step": self.step, "scheduler": self.scheduler.state_dict(), "stream": stream,
                 "rng": checkpoint.rng_state(), "nonfinite_steps": self.nonfinite_steps,
                 "teacher_failed_steps": self.teacher_failed_steps, "teacher_last_error": self.teacher_last_error}
        return checkpoint.save(self.out / "checkpoints", self.step, self.model, self.optimizer, extra,
                               keep=self.cfg.checkpoint.keep)

    def _resume(self) -> None:
        if not self.cfg.checkpoint.resume:
            return
        found = checkpoint.checkpoints(self.out / "checkpoints")
        if not found:
            self.log.print(f"--resume: no checkpoint under {self.out / 'checkpoints'}, starting fresh")
            return
        step, path = found[-1]
        extra = checkpoint.load(path, self.model, self.optimizer)
        self.step, self.nonfinite_steps = extra["step"], extra["nonfinite_steps"]
        self.teacher_failed_steps = extra.get("teacher_failed_steps", 0)  # absent in older checkpoints
        self.teacher_last_error = extra.get("teacher_last_error", "")
        self.scheduler.load_state_dict(extra["scheduler"])
        self.stream.load_state_dict(extra["stream"])
        checkpoint.set_rng_state(extra["rng"])
        self._sync_generator()
        self.log.print(f"resumed from {path} at step {step}")

    def _rank_cache(self) -> str | None:
        path = resolve_cache_path(self.cfg.teacher, self.out)
        if path and self.dist.world_size > 1:  # one SQLite writer per file
            path = str(Path(path).with_suffix(f".rank{self.dist.rank}.sqlite"))
        return path

    def finish(self, summary: dict) -> None:
        """summary.json, the HF export of the final student and the plots (rank 0 writes)."""
        state = parallel.full_state_dict(self.model) if self.sharded else self.model.state_dict()
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            if self.cfg.checkpoint.export:
                path = checkpoint.export_hf(state, self.student_path, self.out / "export", self.tokenizer)
                self.log.print(f"exported the student to {path}")
            if self.cfg.log.plots and (self.out / "metrics.jsonl").exists():
                png = plot_metrics(self.out / "metrics.jsonl", self.out / "curves.png")
                self.log.print(f"plots: {png}")

    def close(self) -> None:
        if getattr(self, "log", None) is not None:
            self.log.close()
        if getattr(self, "teacher", None) is not None:
            self.teacher.close()
        if getattr(self, "generator", None) is not None:
            parallel.barrier()  # every rank is done with collectives before any engine goes away
            # A vLLM engine's shutdown destroys torch.distributed's world group along with its own
            # groups (and fails if ours went first), so it closes before parallel.shutdown().
            self.generator.close()
        parallel.shutdown()

    def _stop_requested(self) -> bool:
        """A stop signal reached any rank (every rank asks at the same step boundary: one collective)."""
        mine = float(self._stop_signals is not None and self._stop_signals.requested)
        return bool(parallel.all_reduce_sum([mine])[0] > 0)

    def __enter__(self) -> Trainer:
        self._stop_signals = _StopSignals().install()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._stop_signals is not None:
            self._stop_signals.restore()
        if exc is None:
            self.close()
            return
        # A failure inside the run (an OOM, say) must stay the last error the user sees: clean up without
        # collectives, and report a clean-up failure instead of raising it over the original.
        if not isinstance(exc, KeyboardInterrupt):  # an interrupt leaves the device usable: clean up normally
            parallel.mark_failed()
        try:
            self.close()
        except Exception as cleanup:  # noqa: BLE001 - the original error is re-raised by `with`
            print(f"omniopd: clean-up after the error below also failed: {type(cleanup).__name__}: {cleanup}",
                  file=sys.stderr, flush=True)


class _StopSignals:
    """Ctrl-C / SIGTERM as a request: the first one lets the running step finish, then fit() saves a checkpoint
    and exits non-zero; a second one interrupts at once. A KeyboardInterrupt raised at an arbitrary point can
    land inside a finalizer (`__del__`, a weakref callback), where Python prints it and drops it: the run then
    trained on to the end and exited 0."""

    ECHO_S = 1.0  # a repeat this soon is the same request: torchrun forwards the terminal's Ctrl-C to ranks
    # that already got it from the terminal (run torchrun with --shutdown_timeout longer than a step, or it
    # kills the ranks before they save)

    def __init__(self):
        self.requested = False
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            if time.monotonic() - self._first > self.ECHO_S:
                raise KeyboardInterrupt
            return
        self.requested, self._first = True, time.monotonic()
        print(f"omniopd: {signal.Signals(signum).name} received: stopping after this step with a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)


class _Timer:
    """Wall time per phase of one step."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def __call__(self, phase: str) -> _Phase:
        return _Phase(self, phase)

    def metrics(self, tokens: int) -> dict[str, float]:
        total = time.perf_counter() - self._start
        out = {f"time/{k}_s": maximum(v) for k, v in self.seconds.items()}  # the slowest rank sets the pace
        out["time/step_s"] = maximum(total)
        out["throughput/tokens_per_s"] = summed(tokens / total if total > 0 else math.nan)  # all ranks' tokens
        return out


class _Phase:
    def __init__(self, timer: _Timer, name: str):
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timer.seconds[self.name] = self.timer.seconds.get(self.name, 0.0) + time.perf_counter() - self.t0
