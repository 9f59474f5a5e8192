"""The teacher's bill before training: `python -m omniopd.train --dry-run` (or `train.dry_run=true`).

Loads the config and the student, samples the first step's real rollout batch (the problems the run would
start with), picks its forks as the trainer does (entropy pass, peak-entropy anchors) and builds the teacher
requests the step would send. From those it counts, per step and for the run:
- requests (forks; sft: prompts) and HTTP calls: one per request where the provider takes `n` (local,
  OpenAI-compatible), n per request on Anthropic, ceil(n / teacher.candidates_per_call) on Gemini;
- input tokens: each call's prompt (the teacher's chat with the partial answer, the instruction too in
  instruct mode, rendered with the chat template), billed once per call;
- output tokens: `expected` = per continuation min(max_tokens, the student response's tokens after the fork
  + 1), since a teacher continuing a response tends to end about where it ends; `at most` = n * max_tokens
  per request (plus the thinking budget per call on Gemini);
- money at `teacher.price_in_per_mtok` / `teacher.price_out_per_mtok` (expected and at most).
A run's later steps are scaled from this one by M's schedule. The cache is not counted (a fresh run).

Counts are in the student's tokenizer with its chat template. A provider bills in its own tokenizer (for English
and maths text usually within some tens of percent of another BPE's count), adds its own chat formatting, and
bills a reasoning model's hidden tokens as output: treat the money as an estimate, the call counts as exact.

It writes `<log.dir>/teacher_estimate.json`; a run in the same log dir then reports its actual counts beside it
in summary.json (`teacher_vs_estimate`, by `report_beside`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from omniopd.config import Config

ESTIMATE_FILE = "teacher_estimate.json"


@dataclass
class Figures:
    requests: float = 0.0
    calls: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    output_tokens_max: float = 0.0
    cost_usd: float = 0.0
    cost_usd_max: float = 0.0

    def scaled(self, factor: float) -> Figures:
        return Figures(**{k: v * factor for k, v in asdict(self).items()})

    def priced(self, cfg: Config) -> Figures:
        price_in, price_out = cfg.teacher.price_in_per_mtok, cfg.teacher.price_out_per_mtok
        self.cost_usd = (self.input_tokens * price_in + self.output_tokens * price_out) / 1e6
        self.cost_usd_max = (self.input_tokens * price_in + self.output_tokens_max * price_out) / 1e6
        return self


def calls_per_request(cfg: Config, n: int) -> int:
    """HTTP calls one request of `n` samples takes on `cfg.teacher.kind`."""
    kind = cfg.teacher.kind
    if kind == "anthropic":
        return n
    if kind == "gemini":
        return math.ceil(n / cfg.teacher.candidates_per_call)
    return 1


def completion_mode(cfg: Config) -> str:
    """The mode the teacher will use: 'instruct' or a prefill (what the teachers pick under 'auto')."""
    t = cfg.teacher
    if t.kind == "local":
        return "prefill"
    if t.completion_mode == "instruct" or (t.completion_mode == "auto" and (
            t.kind == "gemini" or (t.kind == "openai" and not t.base_url and not t.tokenizer))):
        return "instruct"
    return "prefill"


def step_figures(cfg: Config, requests: list, remaining: list[int], tokenizer) -> Figures:
    """Figures of one step's `requests`; `remaining[i]`: the student's response tokens after request i's fork."""
    from omniopd.rollout.teachers.chat import render_prompt
    from omniopd.rollout.teachers.instruct import instruct_messages

    instruct = completion_mode(cfg) == "instruct"
    out = Figures()
    for req, left in zip(requests, remaining, strict=True):
        if instruct:
            prompt = render_prompt(tokenizer, instruct_messages(req.messages, req.prefix), "")
        else:
            prompt = render_prompt(tokenizer, req.messages, req.prefix)
        calls = calls_per_request(cfg, req.n)
        out.requests += 1
        out.calls += calls
        out.input_tokens += calls * len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        thinking = cfg.teacher.thinking_budget * calls if cfg.teacher.kind == "gemini" else 0
        out.output_tokens += req.n * min(req.max_tokens, left + 1) + thinking
        out.output_tokens_max += req.n * req.max_tokens + thinking
    return out


def first_step_requests(cfg: Config) -> tuple[list, list[int], object]:
    """The first step's teacher requests from a real rollout batch, each one's student tokens left after its
    fork, and the student's tokenizer."""
    import torch

    from omniopd import assets, losses
    from omniopd.audit import fork_requests, pick_forks
    from omniopd.baselines import sft_requests
    from omniopd.batch import model_head, pack
    from omniopd.data import PromptStream, load_split, student_messages
    from omniopd.rollout.student import build_generator

    torch.manual_seed(cfg.train.seed)
    path = assets.student_path(cfg.model.student)
    model, tokenizer = assets.load_student(path, "float32", "cpu" if not torch.cuda.is_available() else "cuda")
    problems = PromptStream(load_split(cfg.data.train, cfg.data, "train"), seed=cfg.train.seed).next_batch(
        cfg.train.batch_size)
    gen_cfg = cfg.generation
    if gen_cfg.dtype == "auto":
        from dataclasses import replace

        gen_cfg = replace(gen_cfg, dtype=cfg.model.dtype)
    generator = build_generator(gen_cfg, path, tokenizer=tokenizer, hf_model=model,
                                serving_threads=torch.get_num_threads())
    try:
        grouped = generator.generate([student_messages(p, cfg.data.system_prompt) for p in problems], gen_cfg.n,
                                     temperature=gen_cfg.temperature, top_p=gen_cfg.top_p,
                                     max_new_tokens=gen_cfg.max_new_tokens)
    finally:
        generator.close()
    rows = [(p, s) for p, group in zip(problems, grouped, strict=True) for s in group]
    if cfg.objective.name == "sft":
        requests = sft_requests(problems, cfg)
        lengths = {p.id: max(len(s.token_ids) for q, s in rows if q.id == p.id) for p in problems}
        return requests, [lengths[p.id] for p in problems], tokenizer
    if cfg.objective.name != "omniopd":
        return [], [], tokenizer  # opd reads log-probs (no sampled calls), rl asks no teacher
    device = next(model.parameters()).device
    batch = pack([p for p, _ in rows], [s for _, s in rows], tokenizer.pad_token_id, device)
    with torch.no_grad():
        head = model_head(model, batch, torch.float32)
        entropy, _ = losses.entropy_logprob(head, batch.tokens, batch.response_mask)
    _, forks, _ = pick_forks(entropy, batch.response_mask, batch.responses, [p.id for p in batch.problems],
                             tokenizer, 0, cfg)
    remaining = [len(batch.samples[f.seq].token_ids) - f.anchor for f in forks]
    return fork_requests(forks, batch.problems, cfg, 0, 0), remaining, tokenizer


def estimate(cfg: Config) -> dict:
    """The estimate as a dict: per step (the first) and per run, with what it assumed."""
    from omniopd.audit import num_chunks_at

    requests, remaining, tokenizer = first_step_requests(cfg)
    step = step_figures(cfg, requests, remaining, tokenizer).priced(cfg)
    if cfg.objective.name == "omniopd":  # later steps scale with M's schedule
        m0 = max(1, num_chunks_at(0, cfg.audit))
        factor = sum(num_chunks_at(s, cfg.audit) for s in range(cfg.train.steps)) / m0
    else:
        factor = float(cfg.train.steps)
    run = step.scaled(factor).priced(cfg)
    return {"kind": cfg.teacher.kind, "model": cfg.teacher.model, "mode": completion_mode(cfg),
            "steps": cfg.train.steps, "per_step": asdict(step), "per_run": asdict(run),
            "price_in_per_mtok": cfg.teacher.price_in_per_mtok, "price_out_per_mtok": cfg.teacher.price_out_per_mtok,
            "tokenizer": "student", "n_takes_one_call": calls_per_request(cfg, 4) == 1}


def format_estimate(est: dict) -> str:
    s, r = est["per_step"], est["per_run"]
    lines = [f"teacher {est['kind']} {est['model']!r} ({est['mode']}), {est['steps']} steps; tokens in the "
             "student's tokenizer (a provider counts its own)",
             f"{'':14}{'per step':>16}{'per run':>16}"]
    for key, label in (("requests", "requests"), ("calls", "HTTP calls"), ("input_tokens", "input tokens"),
                       ("output_tokens", "output tokens"), ("output_tokens_max", "  at most")):
        lines.append(f"{label:14}{s[key]:>16,.0f}{r[key]:>16,.0f}")
    for key, label in (("cost_usd", "USD"), ("cost_usd_max", "  at most")):
        lines.append(f"{label:14}{s[key]:>16,.4f}{r[key]:>16,.4f}")
    lines.append(f"at ${est['price_in_per_mtok']:g} / ${est['price_out_per_mtok']:g} per million input / output "
                 "tokens (teacher.price_in_per_mtok, teacher.price_out_per_mtok)")
    return "\n".join(lines)


def run(cfg: Config) -> int:
    """The dry run: print the estimate, write it to <log.dir>/teacher_estimate.json, train nothing."""
    est = estimate(cfg)
    out = Path(cfg.log.dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ESTIMATE_FILE).write_text(json.dumps(est, indent=2))
    print(format_estimate(est), flush=True)
    print(f"omniopd: dry run: nothing trained; the estimate is in {out / ESTIMATE_FILE}", flush=True)
    return 0


def report_beside(cfg: Config, summary: dict) -> dict | None:
    """After a run: its actual teacher figures beside the dry run's estimate (when one is in log.dir), added to
    summary.json as `teacher_vs_estimate` and printed."""
    path = Path(cfg.log.dir) / ESTIMATE_FILE
    usage = summary.get("teacher")
    if not path.exists() or not usage:
        return None
    est = json.loads(path.read_text())["per_run"]
    actual = {"requests": usage.get("requests", 0), "calls": usage.get("calls", usage.get("requests", 0)),
              "input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0),
              "cost_usd": usage.get("cost_usd", 0.0), "cache_hits": usage.get("cache_hits", 0)}
    both = {k: {"estimate": est.get(k), "actual": v} for k, v in actual.items()}
    summary_path = Path(cfg.log.dir) / "summary.json"
    if summary_path.exists():
        written = json.loads(summary_path.read_text())
        written["teacher_vs_estimate"] = both
        summary_path.write_text(json.dumps(written, indent=2))
    print("omniopd: teacher, actual vs dry-run estimate: " + ", ".join(
        f"{k} {v['actual']:,.4g} vs {v['estimate']:,.4g}" for k, v in both.items() if v["estimate"] is not None),
        flush=True)
    return both
