"""One OmniOPD training step, top to bottom (docs/design.md §1), and the loop around it.

    rollout -> trainer forward (entropy, log-probs) -> forks -> teacher continuations -> similarity
    -> Dirichlet targets -> loss -> backward -> clip -> optimizer step -> weight hot-swap

The batch and its packed layout are `batch.py`; the forward stops at the last hidden state and log-probs,
entropies and every loss come from the fused-head kernels, so no `[tokens, V]` logits exist in a step. The
student keeps fp32 master weights and computes in `model.dtype`. Beside this file: fork picking and teacher
requests (`audit/step.py`), the audited loss (`audit/loss.py`), the sft/opd teacher side (`baselines.py`),
parallelism (`parallel.py`), checkpoints (`checkpoint.py`), logging and phase timers (`runlog.py`), stop
signals (`signals.py`); this file only decides what happens in which order.

omniopd has one path: `_prepare` (entropy pass, forks, teacher requests sent) then `_train_prepared` (the
grad forward, the reference, the wait for the answers, the loss). Synchronously, the prepare pass is the
student's grad forward itself, so the step runs one student forward. With `train.overlap` the prepare pass is
a no-grad one right after generation, and the grad and reference forwards run while the teacher answers.
`train.pipeline=1` also produces step k+1's rollouts, forks and teacher answers while step k trains (the
machinery is in `pipeline.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from omniopd import assets, baselines, checkpoint, faults, losses, parallel, profiles, resume_rules
from omniopd.audit import fork_requests, get_similarity, pick_forks
from omniopd.audit.loss import audited_loss
from omniopd.batch import Batch, batch_metrics, model_head, pack
from omniopd.config import Config
from omniopd.data import Problem, PromptStream, load_split, student_messages
from omniopd.eval import harness
from omniopd.eval.mathgrade import grade_math
from omniopd.pipeline import Background, Prepared, StreamedScores
from omniopd.rollout.student import Sample, build_generator
from omniopd.rollout.student.weights import full_tensors
from omniopd.rollout.teachers import TeacherResult, build_teacher, resolve_cache_path
from omniopd.runlog import RunLog, StepTimer, combine_ranks, maximum, plot_metrics, summed
from omniopd.signals import StopSignals


class NonFiniteError(RuntimeError):
    pass


class TeacherDeadError(RuntimeError):
    """Every teacher request failed for `teacher.max_failed_steps` steps in a row; carries the last error."""


class Trainer:
    def __init__(self, cfg: Config, stop_signals: StopSignals | None = None):
        """`stop_signals`: handlers the caller installed before building (a signal while the models load is
        then a request, seen by `stop_requested()`); without them `with Trainer(...)` installs its own."""
        self._stop_signals = stop_signals
        try:
            self._build(cfg)
        except BaseException as e:  # close the engines, teacher and process group opened so far, then raise
            self._cleanup_after(e)
            raise

    def _build(self, cfg: Config) -> None:
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
            parallel.shard(self.model, param_dtype=self.compute_dtype)
            if self.ref_model is not None:
                parallel.shard(self.ref_model)  # held in the compute dtype already
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
        self._saved_step: int | None = None  # the step of the newest checkpoint (saved or resumed from)
        self.nonfinite_steps = 0
        self.teacher_failed_steps, self.teacher_last_error = 0, ""  # consecutive all-failed teacher steps
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
                if self.stop_requested():
                    raise faults.StopAtStepBoundary
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
            if self.stop_requested():  # a signal during the last step
                raise faults.StopAtStepBoundary
        except KeyboardInterrupt as stop:
            if isinstance(stop, faults.StopNow):  # a second signal: the step in flight is half done, never saved
                raise
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
        cfg, timer = self.cfg, StepTimer()
        self.model.train()
        if cfg.objective.name == "omniopd":
            return self._omniopd_step(timer)
        # 1. Roll out: this rank's slice of the global batch, n samples each, from the current weights.
        problems = self._next_problems()
        if cfg.objective.name == "sft":  # the student does not sample: it trains on teacher-written responses
            with timer("teacher"):
                rows, results = baselines.teacher_responses(self.teacher, self.generator, self.tokenizer, problems,
                                                            cfg)
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
            head = self._student_head(batch)
            with torch.no_grad():
                entropy, logprob = losses.entropy_logprob(head.detach(), batch.tokens, batch.response_mask)
                ref = model_head(self.ref_model, batch, self.compute_dtype) if self.ref_model is not None else None
        metrics = batch_metrics(batch, rewards, logprob, entropy)

        # 3. The objective.
        if cfg.objective.name == "opd":
            with timer("teacher"):
                teacher_logprobs = baselines.teacher_logprobs(self.teacher, self.generator, batch, cfg,
                                                              self.tokenizer.pad_token_id, self.dist.device)
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

    def _omniopd_step(self, timer: StepTimer) -> dict[str, float]:
        """omniopd, every mode on one path: a prepared batch (forks picked, teacher requests in flight), then
        `_train_prepared`. Synchronously the batch is prepared with the student's grad forward; with train.overlap
        by a no-grad pass right after generation, the grad forward then running while the teacher answers. With
        train.pipeline=1 the next step's rollouts are generated on a thread meanwhile, and their forks picked and
        sent before this step's update (`_produce`): weights one step old when trained on, so a truncated
        importance ratio corrects the policy-gradient term."""
        cfg = self.cfg
        prepared, self._prepared = self._prepared, None
        if prepared is None:  # the first step, or no pipelining: produce it now
            problems = self._next_problems()
            with timer("generate"):
                rows = self._roll_out(problems)
            prepared = self._prepare(rows, self.step, timer, grad=not (cfg.train.overlap or cfg.train.pipeline))
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

    def _train_prepared(self, prepared: Prepared, producer: Background | None, timer: StepTimer) -> dict[str, float]:
        cfg = self.cfg
        batch = prepared.batch
        metrics = batch_metrics(batch, prepared.rewards, prepared.logprob, prepared.entropy)

        # 2. The student's grad forward (its graph kept for the loss; already made when prepared synchronously)
        #    and the reference, during the teacher wait.
        with timer("forward"):
            head = prepared.head if prepared.head is not None else self._student_head(batch)
            with torch.no_grad():
                ref = model_head(self.ref_model, batch, self.compute_dtype)
                ratio = None
                if cfg.train.pipeline:
                    _, logprob = losses.entropy_logprob(head.detach(), batch.tokens, batch.response_mask)
                    ratio, stats = losses.truncated_ratio(logprob, prepared.logprob, batch.response_mask,
                                                          max_ratio=cfg.train.max_ratio)
                    metrics.update(stats)
                    metrics["pipeline/staleness"] = float(self.step - prepared.version)
        prepared.head = None  # the graph is used once, by this step's loss
        # 5. Each fork is scored as its answer arrives; the teacher's step deadline bounds this wait.
        scores = StreamedScores(self.similarity, prepared.forks, cfg.audit.num_continuations)
        with timer("teacher_wait"):
            results = scores.collect(prepared.job)
        timer.seconds["teacher_wait"] -= scores.seconds
        timer.seconds["score"] = scores.seconds
        metrics["time/teacher_s"] = prepared.job.seconds  # latency from submit to the last answer

        # 5-6. Targets and the loss.
        self._check_teacher(results)
        loss, obj = audited_loss(prepared, head, ref, results, cfg, scores, timer, ratio=ratio)
        metrics.update(obj)

        def produce_next() -> None:  # before the optimizer step: the next batch's forks see these weights
            made = producer.join()
            self._prepared = made if isinstance(made, Prepared) else self._prepare(made, self.step + 1, timer)

        return self._update(loss, batch, metrics, timer, before_step=produce_next if producer else None)

    def _produce(self, problems: list[Problem], step: int, timer: StepTimer) -> Prepared | list[tuple[Problem, Sample]]:
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

    def _prepare(self, rows: list[tuple[Problem, Sample]], step: int, timer: StepTimer, *,
                 grad: bool = False) -> Prepared:
        """Pack the rollouts, pick the forks from an entropy pass at the current weights, send the teacher
        requests (they answer in the background). `grad`: that pass is the step's grad forward, kept."""
        batch, rewards, normalizer = self._pack(rows)
        with timer("forward" if grad else "anchors"), torch.set_grad_enabled(grad):
            head = self._student_head(batch)
        with timer("anchors"):
            with torch.no_grad():
                entropy, logprob = losses.entropy_logprob(head.detach(), batch.tokens, batch.response_mask)
            anchors, forks, m = pick_forks(entropy, batch.response_mask, batch.responses,
                                           [p.id for p in batch.problems], self.tokenizer, step,
                                           self.cfg)
        with timer("teacher_submit"):  # an API teacher returns at once; a local one answers here
            job = self.teacher.submit(fork_requests(forks, batch.problems, self.cfg, step, self.dist.rank))
        return Prepared(batch, rewards, normalizer, entropy, logprob, anchors, forks, m, job,
                        version=self.step, head=head if grad else None)

    def _student_head(self, batch: Batch) -> losses.Head:
        with self._compute():
            return model_head(self.model, batch, self.compute_dtype)

    def _update(self, loss: torch.Tensor, batch: Batch, metrics: dict[str, float], timer: StepTimer,
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

    def _skip_without_teacher_rows(self, results: list[TeacherResult], timer: StepTimer) -> dict[str, float]:
        """sft with no teacher response on some rank: every rank skips the update together (a rank with no rows
        cannot join the others' forward and backward), and the step counts as skipped. A teacher that stays dead
        stops the run in `_check_teacher`."""
        self.log.print(f"step {self.step}: the teacher answered none of some rank's sft requests; step skipped")
        metrics = {"train/skipped_no_teacher": maximum(1.0),
                   "teacher/failed_requests": summed(sum(not r.ok for r in results))}
        metrics.update(timer.metrics(tokens=0))
        return self._reduce(metrics)

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

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs besides the model and optimizer (which `checkpoint` saves sharded)."""
        stream = self.stream.state_dict()
        if self._prepared is not None:  # train.pipeline: the next batch is drawn, not trained on; a resume redraws it
            stream["position"] -= self.cfg.train.batch_size
        return {"step": self.step, "scheduler": self.scheduler.state_dict(), "stream": stream,
                "rng": checkpoint.rng_state(), "nonfinite_steps": self.nonfinite_steps,
                "teacher_failed_steps": self.teacher_failed_steps, "teacher_last_error": self.teacher_last_error}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.nonfinite_steps = state["step"], state["nonfinite_steps"]
        self.teacher_failed_steps = state.get("teacher_failed_steps", 0)  # absent in older checkpoints
        self.teacher_last_error = state.get("teacher_last_error", "")
        self.scheduler.load_state_dict(state["scheduler"])
        self.stream.load_state_dict(state["stream"])
        checkpoint.set_rng_state(state["rng"])

    def save(self) -> Path | None:
        """A checkpoint of this step, unless it is saved already (a stop signal right after a periodic save)."""
        if self._saved_step == self.step:
            self.log.print(f"step {self.step} is checkpointed already")
            return None
        path = checkpoint.save(self.out / "checkpoints", self.step, self.model, self.optimizer, self.state_dict(),
                               keep=self.cfg.checkpoint.keep, config=self.cfg.to_dict())
        self._saved_step = self.step
        return path

    def _resume(self) -> None:
        if not self.cfg.checkpoint.resume:
            return
        root = self.out / "checkpoints"
        newest, _ = checkpoint.newest_intact(root)  # preflight said what it skipped
        if newest is None:
            self.log.print(f"--resume: no checkpoint under {root}, starting fresh")
            return
        step, path, state, fell_back = checkpoint.load_newest(root, newest[0], self.model, self.optimizer,
                                                              self.log.print)
        self.load_state_dict(state)
        if fell_back and self.dist.is_main:  # preflight cut metrics.jsonl back to the newest; this one is older
            resume_rules.truncate_metrics(self.out / "metrics.jsonl", step, in_place=True)
        resume_rules.apply_optim(self.optimizer, self.scheduler, self.cfg.optim)  # this run's rate, not the saved one
        self._saved_step = step
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

        def write() -> None:
            if not self.dist.is_main:
                return
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            if self.cfg.checkpoint.export:
                path = checkpoint.export_hf(state, self.student_path, self.out / "export", self.tokenizer,
                                            overwrite=self.cfg.export.overwrite)
                self.log.print(f"exported the student to {path}")
            if self.cfg.log.plots and (self.out / "metrics.jsonl").exists():
                png = plot_metrics(self.out / "metrics.jsonl", self.out / "curves.png")
                self.log.print(f"plots: {png}")

        try:
            parallel.every_rank(write)  # rank 0's failure (a full disk) ends every rank, none waits on it
        except OSError as e:  # rank 0 itself: one line, like the other file faults
            raise faults.RunFault(f"writing the summary, export or plots of {self.out} failed: {e}") from e
        except parallel.PeerFailed as e:
            raise faults.RunFault(f"rank 0 could not write the summary, export or plots of {self.out} ({e})") from e

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

    def stop_requested(self) -> bool:
        """A stop signal reached any rank (every rank asks at the same step boundary: one collective)."""
        mine = float(self._stop_signals is not None and self._stop_signals.requested)
        return bool(parallel.all_reduce_sum([mine])[0] > 0)

    def __enter__(self) -> Trainer:
        if self._stop_signals is None:
            self._stop_signals = StopSignals().install()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._stop_signals is not None:
            self._stop_signals.restore()
        if exc is None:
            self.close()
            return
        self._cleanup_after(exc)

    def _cleanup_after(self, exc: BaseException) -> None:
        # A failure inside the run (an OOM, say) must stay the last error the user sees: clean up without
        # collectives, and report a clean-up failure instead of raising it over the original.
        # A first signal's stop is an orderly exit at a step boundary: clean up normally. A second one (StopNow)
        # lands anywhere, a checkpoint write or a collective included, so it is a failure like any other.
        if not isinstance(exc, KeyboardInterrupt) or isinstance(exc, faults.StopNow):
            parallel.mark_failed()
        try:
            self.close()
        except Exception as cleanup:  # noqa: BLE001 - the original error is re-raised by `with`
            print(f"omniopd: clean-up after the error below also failed: {type(cleanup).__name__}: {cleanup}",
                  file=sys.stderr, flush=True)
