"""Signal probe: does the chunk target π̂ tell a rollout that ends right from one that ends wrong?

    python experiments/signal_probe.py --task addition --chunk 8 --teacher hinted            # the smallest cell
    python experiments/signal_probe.py --grid                                                # the issue's whole grid
    python experiments/signal_probe.py --task addition --chunk 8 --student smollm2-135m --smoke --out /tmp/sig

The warm student samples rollouts on held-out problems (the task's `eval` split, which neither fine-tune saw) the
way the trainer does (its generator; the temperature and response limit recommended for the task), the eval grader
grades them, and the trainer's exact-entropy forward gives each token's entropy and log-prob. Then, per (task, C,
teacher, selection): the step's own fork code (`pick_forks`, M chunks per rollout, as many as fit) and teacher
requests (`fork_requests`, N=10 continuations each; N=4 is their first 4), per φ the library's similarity and
`score_forks` (k_sem, π̄, π̂), the white-box teacher's token log-probs for OPD's signal Σ_chunk log π_T − log π_S
(`baselines.teacher_logprobs`), and a controlled contrast (a correct rollout's chunk with one digit changed, π̄
recomputed under the student, scored against the same continuations). The report gives, per configuration, the AUC
of π̂, k_sem/N, π̄ and OPD against final correctness, per chunk and averaged per rollout, pooled and within
prompt, with prompt-bootstrap intervals, and paired bootstrap intervals for differences between configurations.

Resumable: every stage unit is one file under `--out`, written atomically (temporary file, then rename); a rerun
loads what exists and computes only the rest; the local teacher's reply cache (`teacher_cache.sqlite`) keeps the
continuations already sampled inside an interrupted unit (they are sampled in slices of 64 requests, so a stop
loses at most one slice). Reports, the grid summary and the plots are recomputed from the stage files on every run
(1–2 min a cell: the bootstrap).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (REPO, HERE):  # run as a script from a clone: `omniopd` and its statistics half, rank_stats.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from rank_stats import auc_with_interval, mean_with_interval, paired_difference, within_auc  # noqa: E402

PHIS = ("ned", "rouge1", "cosine", "hybrid")
N_SUBSET = 4  # N=4 is the first 4 of the N continuations
RESPONSE_LIMIT = {"addition": 96, "chained": 256}  # the demo's limit, and the fine-tune eval's for chained
# The warm student's sampling temperature for training, per task (README, "What they reach"): the trainer's
# default 1.0 on addition; 0.6 on chained, where warm:chained is right in 8.6% of its rollouts at 1.0.
TEMPERATURE = {"addition": 1.0, "chained": 0.6}
GRID = {"addition": (8, 16), "chained": (16, 32, 50)}
RANDOM_AT = {"addition": 8, "chained": 16}  # random-vs-entropy anchors: one C per task (the cheapest)
TEACHERS = ("hinted", "trained")
REQUESTS_PER_SLICE = 64  # teacher requests sampled (and cached) together; each asks for N rows
SCORES = ("pi_hat", "k_over_n", "pi_bar", "opd")


# ---------------------------------------------------------------------------------------------
# Stage files
def write_json(path: Path, obj: Any) -> None:
    """Atomically: a reader (or a rerun after a kill) sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class StopAfter(Exception):
    """Raised after `--stop-after` stage units were computed in this run (tests; a real stop is a kill)."""


class Stages:
    """Each unit: load its file if present, else compute it and write it atomically."""

    def __init__(self, out: Path, stop_after: int | None = None, log: Callable[[str], None] = print):
        self.out, self.stop_after, self.log = out, stop_after, log
        self.computed: list[str] = []

    def unit(self, name: str, compute: Callable[[], dict[str, Any]],
             incomplete: Callable[[dict[str, Any]], str | None] = lambda _: None,
             derived: tuple[str, ...] = ()) -> dict[str, Any]:
        """`incomplete(obj)`: why a finished file must be computed again (failed teacher requests), or None;
        the `derived` units, computed from this one, are then deleted first (a kill between the two must not
        leave a new file beside results of the old)."""
        path = self.out / f"{name}.json"
        if path.is_file():
            obj = json.loads(path.read_text())
            if (why := incomplete(obj)) is None:
                return obj
            self.log(f"[signal] {name}: {why}; computing it again (and the {len(derived)} units derived from it)")
            for unit in derived:
                (self.out / f"{unit}.json").unlink(missing_ok=True)
        if self.stop_after is not None and len(self.computed) >= self.stop_after:
            raise StopAfter(name)
        started = time.monotonic()
        self.log(f"[signal] {name} ...")
        obj = compute()
        obj.setdefault("seconds", round(time.monotonic() - started, 2))
        write_json(path, obj)
        self.computed.append(name)
        self.log(f"[signal] {name}: {obj['seconds']:.1f} s")
        return obj


# ---------------------------------------------------------------------------------------------
# The probe's settings and the models, loaded when a stage first needs them
@dataclass
class Settings:
    task: str
    student: str
    prompts: int = 64
    rollouts: int = 4
    temperature: float | None = None  # None: TEMPERATURE[task]
    max_new_tokens: int = 0  # 0: RESPONSE_LIMIT[task]
    num_chunks: int = 2  # M
    num_continuations: int = 10  # N
    alpha: float = 1.0
    teacher_temperature: float = 0.7
    seed: int = 0
    backend: str = "auto"  # student generator and local teacher: vLLM when it starts, else HF
    phis: tuple[str, ...] = PHIS
    reps: int = 1000

    def __post_init__(self) -> None:
        self.max_new_tokens = self.max_new_tokens or RESPONSE_LIMIT[self.task]
        self.temperature = TEMPERATURE[self.task] if self.temperature is None else self.temperature

    def rollout_key(self) -> dict[str, Any]:
        return {"task": self.task, "student": self.student, "prompts": self.prompts, "rollouts": self.rollouts,
                "temperature": self.temperature, "max_new_tokens": self.max_new_tokens, "seed": self.seed}


def teacher_setup(teacher: str, task: str) -> tuple[str, str]:
    """(model, hint): 'hinted' is the bundled model shown the reference solution; 'trained' is the task's trained
    teacher with the paper's default, no hint."""
    if teacher == "hinted":
        return "smollm2-135m", "solution"
    if teacher == "trained":
        return f"teacher:{task}", "none"
    raise ValueError(f"--teacher {teacher!r}: must be 'hinted' or 'trained'")


def config_for(s: Settings, chunk: int, teacher: str, selection: str):
    """The trainer's Config for one cell: the step code reads everything from it."""
    from omniopd.config import Config

    cfg = Config()
    cfg.data.task = s.task
    cfg.train.seed = s.seed
    cfg.audit.num_chunks, cfg.audit.chunk_len = s.num_chunks, chunk
    cfg.audit.num_continuations, cfg.audit.alpha, cfg.audit.selection = s.num_continuations, s.alpha, selection
    cfg.teacher.kind = "local"
    cfg.teacher.model, cfg.teacher.hint = teacher_setup(teacher, s.task)
    cfg.teacher.temperature = s.teacher_temperature
    cfg.teacher.local_backend = s.backend
    # Not a training step: every fork is sampled however long it takes (under the trainer's 600 s deadline a
    # first run of this probe lost its last 103 of 512 forks, all from the last 13 prompts).
    cfg.teacher.step_deadline_s = math.inf
    return cfg


class Models:
    def __init__(self, s: Settings, out: Path):
        self.s, self.out = s, out
        self._student = self._tokenizer = self._generator = None
        self._teachers: dict[str, Any] = {}
        self._similarities: dict[str, Any] = {}

    @property
    def student(self):
        if self._student is None:
            from omniopd.assets import load_student, student_path

            self._student, self._tokenizer = load_student(student_path(self.s.student), "float32", "cpu")
            self._student.eval()
        return self._student

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from omniopd.assets import student_path

            self._tokenizer = AutoTokenizer.from_pretrained(student_path(self.s.student))
        return self._tokenizer

    def generator(self):
        if self._generator is None:
            import torch

            from omniopd.assets import student_path
            from omniopd.config import GenerationConfig
            from omniopd.rollout.student import build_generator

            cfg = GenerationConfig(backend=self.s.backend, seed=self.s.seed, dtype="float32", max_model_len=2048)
            self._generator = build_generator(cfg, student_path(self.s.student), tokenizer=self.tokenizer,
                                              hf_model=self.student, serving_threads=torch.get_num_threads())
        return self._generator

    def teacher(self, cfg):
        key = cfg.teacher.model
        if key not in self._teachers:
            import torch

            from omniopd.rollout.teachers import build_teacher

            self._teachers[key] = build_teacher(cfg.teacher, cache_path=str(self.out / "teacher_cache.sqlite"),
                                                dtype="float32", serving_threads=torch.get_num_threads())
        return self._teachers[key]

    def similarity(self, phi: str):
        if phi not in self._similarities:
            from omniopd.audit import get_similarity
            from omniopd.config import AuditConfig

            audit = AuditConfig()
            self._similarities[phi] = get_similarity(phi, trim=audit.trim, embedder=audit.embedder)
        return self._similarities[phi]

    def close(self) -> None:
        if self._generator is not None and self._generator is not self._student:
            self._generator.close()
        for t in self._teachers.values():
            t.close()


# ---------------------------------------------------------------------------------------------
# Stage computations
def model_build(name: str) -> str | None:
    """What model `name` is on this machine: a fine-tune alias's built folder (its name carries the recipe's
    version), None when that fine-tune is not built here; any other name stands for itself."""
    from omniopd import finetune

    if finetune.parse_alias(name) is None:
        return name
    try:
        return Path(finetune.resolve(name)).name
    except finetune.FinetuneError:
        return None


def check_build(path: Path, made_by: str | None, name: str) -> None:
    """Stage files name their models by alias, and a rebuild under a new recipe version keeps the alias: the build
    that made a file must be the one the alias names now (an alias not built here computes nothing, so passes)."""
    now = model_build(name)
    if made_by and now and made_by != now:
        raise ValueError(f"{path} was made by {name} as built in {made_by}, but {name} is now {now}: "
                         "use another --out (or delete the file to compute it again)")


def check_sampling(path: Path, cont: dict[str, Any], s: Settings) -> None:
    """A continuations file is reused only for the N and M it was sampled with (files written before M was
    recorded were all sampled at the default M=2)."""
    made = {"n": cont["n"], "m": cont.get("num_chunks", 2)}
    asked = {"n": s.num_continuations, "m": s.num_chunks}
    if made != asked:
        raise ValueError(f"{path} was sampled with {made}, not {asked}: use another --out (every report also gives "
                         f"N={N_SUBSET} as the first {N_SUBSET} of N)")


def problems_of(s: Settings):
    from omniopd.data import builtin_task

    held_out = builtin_task("eval", s.task)
    if s.prompts > len(held_out):
        raise ValueError(f"--prompts {s.prompts}: the {s.task} task's held-out split has {len(held_out)}")
    return held_out[:s.prompts]


def student_pass(models: Models, problems, samples) -> tuple[list[list[float]], list[list[float]]]:
    """The trainer's exact full-vocabulary entropy and log-prob of every response token (its prepare pass)."""
    import torch

    from omniopd import losses
    from omniopd.batch import model_head, pack

    entropy, logprob = [], []
    pad = models.tokenizer.pad_token_id if models.tokenizer.pad_token_id is not None else \
        models.tokenizer.eos_token_id
    for start in range(0, len(samples), 16):
        part = samples[start:start + 16]
        batch = pack(problems[start:start + 16], part, pad, torch.device("cpu"))
        with torch.no_grad():
            head = model_head(models.student, batch, torch.float32)
            ent, logp = losses.entropy_logprob(head, batch.tokens, batch.response_mask)
        for i, smp in enumerate(part):
            entropy.append(ent[i, :len(smp.token_ids)].tolist())
            logprob.append(logp[i, :len(smp.token_ids)].tolist())
    return entropy, logprob


def make_rollouts(s: Settings, models: Models) -> dict[str, Any]:
    import torch

    from omniopd.config import DataConfig, GenerationConfig
    from omniopd.data import student_messages
    from omniopd.eval.harness import grade_response
    from omniopd.eval.mathgrade import MathVerifier

    problems = problems_of(s)
    torch.manual_seed(s.seed)  # the HF backend samples from torch's generator; vLLM is seeded at start
    started = time.monotonic()
    generator = models.generator()
    grouped = generator.generate([student_messages(p, DataConfig().system_prompt) for p in problems], s.rollouts,
                                 temperature=s.temperature, top_p=GenerationConfig().top_p,
                                 max_new_tokens=s.max_new_tokens)
    gen_seconds = time.monotonic() - started
    rows = [(p, smp) for p, group in zip(problems, grouped) for smp in group]
    verifier = MathVerifier()
    try:
        grades = [grade_response(p, smp.text, "math", verifier=verifier) for p, smp in rows]
    finally:
        verifier.close()
    entropy, logprob = student_pass(models, [p for p, _ in rows], [smp for _, smp in rows])
    return {"key": s.rollout_key(), "student_build": model_build(s.student), "backend": generator.backend,
            "generate_seconds": round(gen_seconds, 2),
            "rollouts": [{"prompt": i // s.rollouts, "problem_id": p.id, "prompt_ids": smp.prompt_ids,
                          "token_ids": smp.token_ids, "text": smp.text, "finish_reason": smp.finish_reason,
                          "correct": bool(ok), "verdict": verdict, "entropy": ent, "logprob": lp}
                         for i, ((p, smp), (ok, verdict), ent, lp) in enumerate(zip(rows, grades, entropy, logprob))],
            "accuracy": sum(ok for ok, _ in grades) / len(grades)}


def padded(rollouts: list[dict[str, Any]], field_name: str):
    import torch

    width = max(1, max(len(r["token_ids"]) for r in rollouts))
    out = torch.zeros(len(rollouts), width, dtype=torch.float32)
    mask = torch.zeros(len(rollouts), width, dtype=torch.bool)
    for i, r in enumerate(rollouts):
        out[i, :len(r[field_name])] = torch.tensor(r[field_name], dtype=torch.float32)
        mask[i, :len(r["token_ids"])] = True
    return out, mask


def make_continuations(s: Settings, models: Models, rollouts: dict[str, Any], chunk: int, teacher: str,
                       selection: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The step's forks on every rollout (M per rollout, as many as fit) and N teacher continuations of each."""
    from omniopd.audit import fork_requests, pick_forks

    cfg = config_for(s, chunk, teacher, selection)
    rows = rollouts["rollouts"]
    entropy, mask = padded(rows, "entropy")
    problems = {p.id: p for p in problems_of(s)}
    row_problems = [problems[r["problem_id"]] for r in rows]
    anchors, forks, _ = pick_forks(entropy, mask, [r["token_ids"] for r in rows], [r["problem_id"] for r in rows],
                                   models.tokenizer, 0, cfg)
    requests = fork_requests(forks, row_problems, cfg, 0, 0)
    t = models.teacher(cfg)
    # In slices: the reply cache is written per sampled batch, so a stop loses at most one slice (the
    # engine's own batch would be 4096 rows, tens of minutes at C=50 on this CPU).
    results, started = [], time.monotonic()
    for lo in range(0, len(requests), REQUESTS_PER_SLICE):
        results += t.generate(requests[lo:lo + REQUESTS_PER_SLICE])
        log(f"[signal] {chunk=} {teacher} {selection}: {len(results)}/{len(requests)} forks answered "
            f"({time.monotonic() - started:.0f}s)")
    return {"chunk": chunk, "teacher": teacher, "teacher_model": cfg.teacher.model,
            "teacher_build": model_build(cfg.teacher.model), "hint": cfg.teacher.hint,
            "selection": selection, "n": s.num_continuations, "num_chunks": s.num_chunks, "anchors": anchors.tolist(),
            "forks": [{"seq": f.seq, "anchor": f.anchor, "prefix": f.prefix_text, "chunk": f.chunk_text}
                      for f in forks],
            "texts": [r.texts for r in results], "errors": [r.error for r in results],
            "teacher_backend": t.backend,
            "prompt_tokens": sum(r.prompt_tokens for r in results),
            "completion_tokens": sum(r.completion_tokens for r in results),
            "cached_requests": sum(r.cached for r in results)}


def score_unit(cell: str, phi: str) -> str:
    return f"scores-{cell}-{phi}"


def contrast_unit(cell: str) -> str:
    return f"contrast-{cell}"


def contrast_score_unit(cell: str, phi: str) -> str:
    return f"contrast-scores-{cell}-{phi}"


def derived_units(cell: str) -> tuple[str, ...]:
    """Every unit computed from a cell's continuations (every φ, not only this run's)."""
    return (contrast_unit(cell), *(f(cell, phi) for f in (score_unit, contrast_score_unit) for phi in PHIS))


def failed_requests(cont: dict[str, Any]) -> str | None:
    """A continuations file with failed requests is asked again (the answered ones come from the reply cache)."""
    failed = sum(1 for e in cont["errors"] if e)
    return f"{failed} of {len(cont['errors'])} teacher requests failed" if failed else None


def complete(texts: list[str | None] | None, n: int) -> bool:
    return texts is not None and sum(isinstance(x, str) for x in texts) >= n


def answered(texts: list[str | None], n: int) -> list[str]:
    """The first n continuations the teacher answered (a failed sample is None): what φ and π̂ are computed on."""
    return [x for x in texts if isinstance(x, str)][:n]


def make_scores(models: Models, cont: dict[str, Any], phi: str, chunks: list[str] | None = None) -> dict[str, Any]:
    """φ(chunk, r_n) for every fork with all N continuations (None for the others), in one batched call."""
    n = cont["n"]
    chunks = chunks if chunks is not None else [f["chunk"] for f in cont["forks"]]
    keep = [i for i, t in enumerate(cont["texts"]) if complete(t, n)]
    out: list[list[float] | None] = [None] * len(chunks)
    if keep:
        values = models.similarity(phi)([chunks[i] for i in keep],
                                        [answered(cont["texts"][i], n) for i in keep])
        for i, row in zip(keep, values.double().tolist()):
            out[i] = row
    return {"phi": phi, "values": out}


def make_teacher_logprobs(s: Settings, models: Models, rollouts: dict[str, Any], teacher: str) -> dict[str, Any]:
    """OPD's view: the white-box local teacher's log-prob of every student token, in the teacher's own context
    (the hinted teacher sees the solution, as in `opd` training), via `baselines.teacher_logprobs`."""
    import torch

    from omniopd.baselines import teacher_logprobs
    from omniopd.batch import pack
    from omniopd.rollout.student import Sample, chat_prompt_ids

    cfg = config_for(s, 8, teacher, "entropy")
    t = models.teacher(cfg)
    rows = rollouts["rollouts"]
    problems = {p.id: p for p in problems_of(s)}
    tok = models.tokenizer

    class PromptIds:  # what teacher_logprobs asks of the generator: the chat template's prompt ids
        def prompt_ids(self, messages):
            return chat_prompt_ids(tok, messages)

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for start in range(0, len(rows), 16):
        part = rows[start:start + 16]
        samples = [Sample(r["prompt_ids"], r["token_ids"], r["text"], r["finish_reason"], r["logprob"]) for r in part]
        batch = pack([problems[r["problem_id"]] for r in part], samples, pad, torch.device("cpu"))
        logp = teacher_logprobs(t, PromptIds(), batch, cfg, pad, torch.device("cpu"))
        out += [logp[i, :len(r["token_ids"])].double().tolist() for i, r in enumerate(part)]
    return {"teacher": teacher, "teacher_model": cfg.teacher.model, "teacher_build": model_build(cfg.teacher.model),
            "hint": cfg.teacher.hint, "logprobs": out}


def change_one_digit(token_ids: Sequence[int], anchor: int, chunk: int, digit_ids: dict[int, int],
                     seed: int) -> tuple[int, int, int, list[int]] | None:
    """(position, old digit, new digit, changed ids): one single-digit token of `[anchor, anchor + chunk)`, picked
    with `random.Random(seed)`, replaced by another digit (so the number it belongs to takes a wrong value);
    None when the chunk holds no digit token. SmolLM2's tokenizer writes every digit as its own token."""
    by_id = {v: k for k, v in digit_ids.items()}
    ids = list(token_ids)
    spots = [t for t in range(anchor, anchor + chunk) if ids[t] in by_id]
    if not spots:
        return None
    rng = random.Random(seed)
    at = rng.choice(spots)
    old = by_id[ids[at]]
    new = rng.choice([d for d in range(10) if d != old])
    ids[at] = digit_ids[new]
    return at, old, new, ids


def make_contrast(s: Settings, models: Models, rollouts: dict[str, Any], cont: dict[str, Any]) -> dict[str, Any]:
    """For every fork of a correct rollout with a digit in its chunk: one digit token (seeded choice) changed to
    another digit, the chunk text re-decoded, π̄ recomputed by the student on the changed response."""
    import torch

    from omniopd.audit import build_forks, stable_seed

    tok = models.tokenizer
    digit_ids = {d: tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    rows, chunk = rollouts["rollouts"], cont["chunk"]
    pairs, changed_rows = [], []
    for i, f in enumerate(cont["forks"]):
        r = rows[f["seq"]]
        if not r["correct"] or not complete(cont["texts"][i], cont["n"]):
            continue
        changed = change_one_digit(r["token_ids"], f["anchor"], chunk, digit_ids,
                                   stable_seed("contrast", r["problem_id"], f["seq"], f["anchor"]))
        if changed is None:
            continue
        at, old, new, ids = changed
        anchors = torch.tensor([[f["anchor"]]], dtype=torch.int64)
        fork = build_forks([ids], anchors, tok, chunk)[0]
        pairs.append({"fork": i, "position": at, "old": old, "new": new, "chunk": fork.chunk_text,
                      "prefix_same": fork.prefix_text == f["prefix"]})
        changed_rows.append(ids)
    from omniopd.rollout.student import Sample

    problems = {p.id: p for p in problems_of(s)}
    owners = [rows[cont["forks"][p["fork"]]["seq"]] for p in pairs]
    samples = [Sample(r["prompt_ids"], ids, "", "stop", []) for r, ids in zip(owners, changed_rows)]
    _, logprob = student_pass(models, [problems[r["problem_id"]] for r in owners], samples) if samples \
        else ([], [])
    for p, lp in zip(pairs, logprob):
        a = cont["forks"][p["fork"]]["anchor"]
        p["pi_bar"] = math.exp(sum(lp[a:a + chunk]) / chunk)
    eligible = sum(rows[f["seq"]]["correct"] and complete(t, cont["n"]) for f, t in zip(cont["forks"], cont["texts"]))
    return {"pairs": pairs, "eligible_forks": eligible, "skipped_no_digit": eligible - len(pairs)}


# ---------------------------------------------------------------------------------------------
# Targets through the library's own scoring (score_forks: π̄ gather, dropping, acceptance_target)
@dataclass
class Targets:
    rows: list[int]  # rollout of each scored fork
    k_over_n: np.ndarray
    pi_bar: np.ndarray
    pi_hat: np.ndarray
    kept: list[int] = field(default_factory=list)  # fork index of each scored fork


def targets(cont: dict[str, Any], phi_values: list[list[float] | None], logprob_rows: list[list[float]], n: int,
            alpha: float, forks_subset: list[int] | None = None) -> Targets:
    """π̂, k_sem/N and π̄ of the forks scored at the first `n` continuations, via `score_forks` (φ precomputed)."""
    import torch

    from omniopd.audit import Fork, score_forks

    forks_all = cont["forks"]
    idx = forks_subset if forks_subset is not None else list(range(len(forks_all)))
    width = max(1, max(len(lp) for lp in logprob_rows))
    old = torch.zeros(len(logprob_rows), width, dtype=torch.float64)
    for i, lp in enumerate(logprob_rows):
        old[i, :len(lp)] = torch.tensor(lp, dtype=torch.float64)
    # anchors of the chosen forks only, [B, M'] row-major as score_forks expects
    per_row: dict[int, list[int]] = {}
    for i in idx:
        per_row.setdefault(forks_all[i]["seq"], []).append(i)
    m = max((len(v) for v in per_row.values()), default=0)
    anchors = torch.full((len(logprob_rows), max(m, 1)), -1, dtype=torch.int64)
    order = []
    for seq in sorted(per_row):
        for j, i in enumerate(sorted(per_row[seq], key=lambda i: forks_all[i]["anchor"])):
            anchors[seq, j] = forks_all[i]["anchor"]
            order.append(i)
    forks = [Fork(forks_all[i]["seq"], forks_all[i]["anchor"], forks_all[i]["prefix"],
                  forks_all[i]["chunk"]) for i in order]
    texts = [answered(cont["texts"][i], n) if phi_values[i] is not None else None for i in order]
    kept = [i for i in order if phi_values[i] is not None]
    phi = torch.tensor([phi_values[i][:n] for i in kept], dtype=torch.float64).reshape(len(kept), n)
    result = score_forks(anchors, forks, texts, old, lambda _s, _t: phi, n=n, alpha=alpha,
                         chunk_len=cont["chunk"])
    mask = result.kept
    return Targets(rows=[forks_all[i]["seq"] for i in kept], k_over_n=(result.k_sem[mask] / n).numpy(),
                   pi_bar=result.pi_bar[mask].numpy(), pi_hat=result.pi_hat[mask].numpy(), kept=kept)


def opd_signal(cont: dict[str, Any], kept: list[int], rows: list[dict[str, Any]],
               teacher_lp: list[list[float]]) -> np.ndarray:
    """Σ over the chunk of log π_T − log π_S (the student's log-probs from the trainer pass)."""
    c = cont["chunk"]
    out = []
    for i in kept:
        f = cont["forks"][i]
        a, seq = f["anchor"], f["seq"]
        out.append(sum(teacher_lp[seq][a:a + c]) - sum(rows[seq]["logprob"][a:a + c]))
    return np.asarray(out, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Reports
def _per_rollout(values: np.ndarray, fork_rows: list[int], num_rows: int) -> np.ndarray:
    """Mean over each rollout's scored chunks; NaN for a rollout without one."""
    total, count = np.zeros(num_rows), np.zeros(num_rows)
    np.add.at(total, fork_rows, values)
    np.add.at(count, fork_rows, 1)
    with np.errstate(invalid="ignore"):
        return total / count


def spread(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {}
    p = np.percentile(x, [10, 50, 90])
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "p10": float(p[0]),
            "p50": float(p[1]), "p90": float(p[2]), "max": float(x.max())}


def evaluate_scores(per_chunk: dict[str, np.ndarray], fork_rows: list[int], rows: list[dict[str, Any]],
                    reps: int) -> dict[str, Any]:
    """AUCs of every score, per chunk and per rollout, pooled and within prompt, with intervals."""
    labels_row = np.array([r["correct"] for r in rows], dtype=bool)
    groups_row = np.array([r["prompt"] for r in rows])
    fr = np.asarray(fork_rows, dtype=np.int64)
    out: dict[str, Any] = {}
    for name, values in per_chunk.items():
        res: dict[str, Any] = {}
        per_roll = _per_rollout(values, list(fr), len(rows))
        has = ~np.isnan(per_roll)
        for level, (v, y, g) in {"chunk": (values, labels_row[fr] if len(fr) else np.zeros(0, bool),
                                           groups_row[fr] if len(fr) else np.zeros(0, int)),
                                 "rollout": (per_roll[has], labels_row[has], groups_row[has])}.items():
            res[level] = {"units": int(len(v)), "positives": int(y.sum()),
                          "pooled": auc_with_interval(v, y, g, within=False, reps=reps),
                          "within": auc_with_interval(v, y, g, within=True, reps=reps)}
        out[name] = res
    return out


def cell_name(task: str, chunk: int, teacher: str, selection: str = "entropy") -> str:
    return f"{task}-C{chunk}-{teacher}" + ("" if selection == "entropy" else f"-{selection}")


def cell_report(s: Settings, rollouts: dict[str, Any], cont: dict[str, Any], scores: dict[str, dict[str, Any]],
                teacher_lp: dict[str, Any] | None, contrast: dict[str, Any] | None,
                contrast_scores: dict[str, dict[str, Any]], cost: dict[str, Any]) -> dict[str, Any]:
    rows = rollouts["rollouts"]
    lp_rows = [r["logprob"] for r in rows]
    n_full = cont["n"]
    configs: dict[str, Any] = {}
    per_rollout: dict[str, list[float | None]] = {}
    hist: dict[str, dict[str, list[float]]] = {}
    labels = np.array([r["correct"] for r in rows], dtype=bool)
    for phi, sc in scores.items():
        for n in sorted({n_full, min(N_SUBSET, n_full)}, reverse=True):
            t = targets(cont, sc["values"], lp_rows, n, s.alpha)
            name = f"{phi}/N{n}"
            chunk_scores = {"pi_hat": t.pi_hat, "k_over_n": t.k_over_n, "pi_bar": t.pi_bar}
            if teacher_lp is not None:
                chunk_scores["opd"] = opd_signal(cont, t.kept, rows, teacher_lp["logprobs"])
            configs[name] = {"chunks": len(t.kept), "auc": evaluate_scores(chunk_scores, t.rows, rows, s.reps),
                             "pi_hat_spread": spread(t.pi_hat),
                             "pi_hat_spread_correct": spread(t.pi_hat[labels[t.rows]] if t.rows else t.pi_hat),
                             "pi_hat_spread_wrong": spread(t.pi_hat[~labels[t.rows]] if t.rows else t.pi_hat)}
            for key, v in chunk_scores.items():
                per_rollout[f"{name}/{key}"] = [None if math.isnan(x) else float(x)
                                                for x in _per_rollout(v, t.rows, len(rows))]
            hist[name] = {"correct": t.pi_hat[labels[t.rows]].tolist() if t.rows else [],
                          "wrong": t.pi_hat[~labels[t.rows]].tolist() if t.rows else []}
            if contrast is not None and phi in contrast_scores:
                configs[name]["contrast"] = contrast_summary(cont, sc, contrast, contrast_scores[phi], lp_rows, n,
                                                             s.alpha, prompts=[r["prompt"] for r in rows],
                                                             reps=s.reps)
    diffs = cell_differences(per_rollout, rows, s.reps)
    return {"cell": cell_name(s.task, cont["chunk"], cont["teacher"], cont["selection"]), "task": s.task,
            "chunk": cont["chunk"], "teacher": cont["teacher"], "teacher_model": cont["teacher_model"],
            "hint": cont["hint"], "selection": cont["selection"], "settings": s.rollout_key() | {
                "num_chunks": s.num_chunks, "num_continuations": n_full, "alpha": s.alpha,
                "teacher_temperature": s.teacher_temperature},
            "student_build": rollouts.get("student_build"), "teacher_build": cont.get("teacher_build"),
            "rollouts": len(rows), "prompts": len({r["prompt"] for r in rows}),
            "accuracy": rollouts["accuracy"],
            "prompts_with_both": within_auc(np.zeros(len(rows)), labels, [r["prompt"] for r in rows])[1],
            "forks": len(cont["forks"]), "forks_complete": sum(complete(t, n_full) for t in cont["texts"]),
            "rollouts_scored": len({f["seq"] for f, t in zip(cont["forks"], cont["texts"]) if complete(t, n_full)}),
            "fork_errors": [e for e in cont.get("errors", []) if e],
            "configs": configs, "differences": diffs, "per_rollout": per_rollout, "pi_hat_hist": hist,
            "cost": cost}


def cell_differences(per_rollout: dict[str, list[float | None]], rows: list[dict[str, Any]],
                     reps: int) -> dict[str, Any]:
    """Paired differences inside a cell, per rollout: each φ/N's π̂ against ned/N10's, and π̂ against k_sem/N,
    π̄ and OPD of the same configuration."""
    base = next((k for k in per_rollout if k.endswith("/pi_hat") and k.startswith("ned/")), None)
    pairs = []
    for key in per_rollout:
        if not key.endswith("/pi_hat"):
            continue
        if base is not None and key != base:
            pairs.append((key, base))
        cfg = key.rsplit("/", 1)[0]
        for other in ("k_over_n", "pi_bar", "opd"):
            if f"{cfg}/{other}" in per_rollout:
                pairs.append((key, f"{cfg}/{other}"))
    return {f"{a} - {b}": paired_rollouts(per_rollout[a], per_rollout[b], rows, reps) for a, b in pairs}


def paired_rollouts(a: list[float | None], b: list[float | None], rows: list[dict[str, Any]],
                    reps: int) -> dict[str, Any]:
    both = [i for i in range(len(rows)) if a[i] is not None and b[i] is not None]
    y = [rows[i]["correct"] for i in both]
    g = [rows[i]["prompt"] for i in both]
    av, bv = [a[i] for i in both], [b[i] for i in both]
    return {"pooled": paired_difference(av, bv, y, g, within=False, reps=reps),
            "within": paired_difference(av, bv, y, g, within=True, reps=reps)}


def contrast_summary(cont, sc, contrast, csc, lp_rows, n, alpha, *, prompts: Sequence[Any] | None = None,
                     reps: int = 1000) -> dict[str, Any]:
    """Fraction of (true, changed) chunk pairs where π̂, k_sem/N (and π̄) rank the true chunk higher (ties: 1/2),
    π̂'s with a 95% interval resampling the prompts (`prompts[row]`) the pairs come from.
    The changed chunk keeps the fork and its continuations; its φ is of the changed text and its π̄ the
    student's on the changed response, so π̂' = acceptance_target(k_sem', π̄')."""
    import torch

    from omniopd.audit import acceptance_target

    pairs = contrast["pairs"]
    if not pairs:
        return {"pairs": 0, "skipped_no_digit": contrast["skipped_no_digit"]}
    idx = [p["fork"] for p in pairs]
    true = targets(cont, sc["values"], lp_rows, n, alpha, forks_subset=idx)
    pos = {i: j for j, i in enumerate(true.kept)}
    th = np.array([true.pi_hat[pos[i]] for i in idx])
    tk = np.array([true.k_over_n[pos[i]] for i in idx])
    tb = np.array([true.pi_bar[pos[i]] for i in idx])
    k_changed = torch.tensor([sum(v[:n]) for v in csc["values"]], dtype=torch.float64)
    bar_changed = torch.tensor([p["pi_bar"] for p in pairs], dtype=torch.float64)
    ch = acceptance_target(k_changed, bar_changed, n, alpha).numpy()
    ck, cb = (k_changed / n).numpy(), bar_changed.numpy()

    def won(x, y):
        return (x > y) + 0.5 * (x == y)

    def frac(x, y):
        return float(np.mean(won(x, y)))

    groups = [prompts[cont["forks"][i]["seq"]] for i in idx] if prompts is not None else list(range(len(idx)))
    return {"pairs": len(pairs), "skipped_no_digit": contrast["skipped_no_digit"],
            "pi_hat_true_higher": frac(th, ch),
            "pi_hat_true_higher_ci": mean_with_interval(won(th, ch), groups, reps=reps)["ci"],
            "k_over_n_true_higher": frac(tk, ck),
            "pi_bar_true_higher": frac(tb, cb), "mean_pi_hat_drop": float(np.mean(th - ch)),
            "mean_k_over_n_drop": float(np.mean(tk - ck))}


# ---------------------------------------------------------------------------------------------
# Markdown
def _fmt(x: float | None, nd: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _auc_cell(r: dict[str, Any]) -> str:
    lo, hi = r["ci"]
    return f"{_fmt(r['auc'])} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]"


def cell_markdown(rep: dict[str, Any], command: str) -> str:
    s = rep["settings"]
    lines = [f"# Signal probe: {rep['cell']}", "", f"Command: `{command}`", "",
             f"Student `{s['student']}`" + (f" (build `{rep['student_build']}`)" if rep.get("student_build") else "")
             + f" at T={s['temperature']}, limit {s['max_new_tokens']} tokens: "
             f"{rep['rollouts']} rollouts on {rep['prompts']} held-out prompts, accuracy {rep['accuracy']:.3f}; "
             f"{rep['prompts_with_both']} prompts have both right and wrong rollouts. Teacher `{rep['teacher_model']}` "
             + (f"(build `{rep['teacher_build']}`, " if rep.get("teacher_build") else "(")
             + f"hint {rep['hint']}), {rep['selection']} anchors, M={s['num_chunks']}, C={rep['chunk']}, "
             f"N={s['num_continuations']} (N=4: the first 4), α={s['alpha']}: {rep['forks']} forks, "
             f"{rep['forks_complete']} with all N continuations, on {rep.get('rollouts_scored', '?')} rollouts"
             + (f" ({len(rep['fork_errors'])} requests failed, e.g. '{rep['fork_errors'][0]}')"
                if rep.get("fork_errors") else "") + ".", "",
             "AUC against final correctness [95% prompt-bootstrap interval]; per rollout = the mean over its chunks; "
             "within = right vs wrong rollouts of the same prompt only.", "",
             "| φ / N | score | per rollout | per rollout, within | per chunk | per chunk, within |",
             "|---|---|---|---|---|---|"]
    for name, c in rep["configs"].items():
        for score in SCORES:
            if score not in c["auc"]:
                continue
            a = c["auc"][score]
            lines.append(f"| {name} | {score} | {_auc_cell(a['rollout']['pooled'])} | "
                         f"{_auc_cell(a['rollout']['within'])} | {_auc_cell(a['chunk']['pooled'])} | "
                         f"{_auc_cell(a['chunk']['within'])} |")
    lines += ["", "π̂ spread (all chunks; right-rollout vs wrong-rollout means) and the controlled contrast "
              "(one digit of a right rollout's chunk changed: share of pairs ranked right):", "",
              "| φ / N | chunks | π̂ mean ± std | p10 / p50 / p90 | mean right / wrong | contrast pairs | "
              "π̂ right | k_sem/N right | π̄ right |", "|---|---|---|---|---|---|---|---|---|"]
    for name, c in rep["configs"].items():
        sp, ct = c["pi_hat_spread"], c.get("contrast", {})
        lines.append(f"| {name} | {c['chunks']} | {_fmt(sp.get('mean'))} ± {_fmt(sp.get('std'))} | "
                     f"{_fmt(sp.get('p10'))} / {_fmt(sp.get('p50'))} / {_fmt(sp.get('p90'))} | "
                     f"{_fmt(c['pi_hat_spread_correct'].get('mean'))} / {_fmt(c['pi_hat_spread_wrong'].get('mean'))} "
                     f"| {ct.get('pairs', '—')} | {_fmt(ct.get('pi_hat_true_higher'))}"
                     + (" [{}, {}]".format(*(_fmt(x, 2) for x in ct["pi_hat_true_higher_ci"]))
                        if "pi_hat_true_higher_ci" in ct else "") + " | "
                     f"{_fmt(ct.get('k_over_n_true_higher'))} | {_fmt(ct.get('pi_bar_true_higher'))} |")
    lines += ["", "Paired differences of per-rollout AUC on shared rollouts [95% prompt-bootstrap interval]:", "",
              "| difference | pooled | within prompt |", "|---|---|---|"]
    for key, d in rep["differences"].items():
        lines.append(f"| {key} | {_diff_cell(d['pooled'])} | {_diff_cell(d['within'])} |")
    cost = rep["cost"]
    lines += ["", f"Cost: {cost['seconds']:.0f} s of this cell's stages ({json.dumps(cost['stage_seconds'])}), "
              f"{cost['teacher_prompt_tokens']} teacher prompt tokens, {cost['teacher_completion_tokens']} "
              f"teacher completion tokens; rollouts (shared by every cell of the task) "
              f"{cost['rollout_seconds']:.0f} s."
              + (f" {cost['teacher_cached_requests']} of the {cost['teacher_requests']} teacher requests came from an "
                 "earlier run's reply cache: their time and tokens are not in these figures."
                 if cost.get("teacher_cached_requests") else ""), ""]
    return "\n".join(lines)


def _diff_cell(d: dict[str, Any]) -> str:
    lo, hi = d["ci"]
    both = f", {d['prompts_with_both']} prompts with both" if "prompts_with_both" in d else ""
    return f"{_fmt(d['diff'])} [{_fmt(lo, 2)}, {_fmt(hi, 2)}] (n={d['units']}{both})"


# ---------------------------------------------------------------------------------------------
# Grid summary and plots
def grid_summary(out: Path, reps: int) -> dict[str, Any]:
    """Every report under `out` in one table, plus paired differences across cells on shared rollouts:
    trained vs hinted teacher, random vs entropy anchors, and each C vs the task's smallest (ned/N10 π̂ per
    rollout)."""
    reports = {p.stem.removeprefix("report-"): json.loads(p.read_text()) for p in sorted(out.glob("report-*.json"))}
    lines = ["# Signal probe: grid summary", "",
             "Per-rollout AUC of π̂ against final correctness [95% prompt-bootstrap interval], pooled and within "
             "prompt; k_sem/N, π̄ and OPD's Σ log π_T − log π_S per rollout, pooled; contrast = share of "
             "one-digit changes ranked below the true chunk by π̂.", "",
             "| cell | φ / N | rollouts scored / sampled (prompts, both) | acc | π̂ | π̂ within | k_sem/N | π̄ | OPD "
             "| π̂ std | contrast | teacher tokens | s | cached requests |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell, rep in reports.items():
        cost = rep["cost"]
        for name, c in rep["configs"].items():
            a = c["auc"]
            lines.append(
                f"| {cell} | {name} | {rep.get('rollouts_scored', '?')} / {rep['rollouts']} ({rep['prompts']}, "
                f"{rep['prompts_with_both']}) | "
                f"{rep['accuracy']:.2f} | {_auc_cell(a['pi_hat']['rollout']['pooled'])} | "
                f"{_auc_cell(a['pi_hat']['rollout']['within'])} | {_fmt(a['k_over_n']['rollout']['pooled']['auc'])} | "
                f"{_fmt(a['pi_bar']['rollout']['pooled']['auc'])} | "
                f"{_fmt(a['opd']['rollout']['pooled']['auc']) if 'opd' in a else '—'} | "
                f"{_fmt(c['pi_hat_spread'].get('std'))} | {_fmt(c.get('contrast', {}).get('pi_hat_true_higher'))} | "
                f"{cost['teacher_prompt_tokens'] + cost['teacher_completion_tokens']} | {cost['seconds']:.0f} | "
                f"{cost.get('teacher_cached_requests', '?')} / {cost.get('teacher_requests', '?')} |")
    across = {}
    for cell, rep in reports.items():
        rows = [{"correct": c, "prompt": p} for c, p in zip(rep["labels"], rep["groups"])]
        if rep["teacher"] == "trained" and rep["selection"] == "entropy":
            other = cell_name(rep["task"], rep["chunk"], "hinted")
            if other in reports:
                across[f"{cell} - {other}"] = _across(rep, reports[other], rows, reps)
        if rep["selection"] == "random":
            other = cell_name(rep["task"], rep["chunk"], rep["teacher"])
            if other in reports:
                across[f"{cell} - {other}"] = _across(rep, reports[other], rows, reps)
        if rep["selection"] == "entropy":  # each C against the task's smallest C, same teacher
            smallest = min(r["chunk"] for r in reports.values() if r["task"] == rep["task"])
            other = cell_name(rep["task"], smallest, rep["teacher"])
            if rep["chunk"] != smallest and other in reports:
                across[f"{cell} - {other}"] = _across(rep, reports[other], rows, reps)
    if across:
        lines += ["", "Paired differences across cells (ned/N10 π̂ per rollout, shared rollouts):", "",
                  "| difference | pooled | within prompt |", "|---|---|---|"]
        for key, d in across.items():
            lines.append(f"| {key} | {_diff_cell(d['pooled'])} | {_diff_cell(d['within'])} |")
    summary = {"cells": {k: {"configs": {n: {"auc": c["auc"], "contrast": c.get("contrast")} for n, c in
                                        r["configs"].items()}, "cost": r["cost"]} for k, r in reports.items()},
               "across": across}
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def _across(a: dict[str, Any], b: dict[str, Any], rows: list[dict[str, Any]], reps: int) -> dict[str, Any]:
    key = next((k for k in a["per_rollout"] if k.startswith("ned/") and k.endswith("/pi_hat")),
               next(k for k in a["per_rollout"] if k.endswith("/pi_hat")))
    return paired_rollouts(a["per_rollout"][key], b["per_rollout"].get(key, [None] * len(rows)), rows, reps)


def plots(out: Path) -> list[str]:
    """AUC per configuration with intervals, and π̂ histograms right vs wrong per cell (matplotlib, if present)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("report-*.json"))]
    if not reports:
        return []
    written = []
    labels, values, lows, highs = [], [], [], []
    for rep in reports:
        for name, c in rep["configs"].items():
            r = c["auc"]["pi_hat"]["rollout"]["pooled"]
            labels.append(f"{rep['cell']} {name}")
            values.append(r["auc"])
            lows.append(r["ci"][0])
            highs.append(r["ci"][1])
    v = np.array(values, dtype=float)
    err = np.array([v - np.array(lows, dtype=float), np.array(highs, dtype=float) - v])
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(labels) + 1.5))
    ax.errorbar(v, np.arange(len(labels)), xerr=np.nan_to_num(err), fmt="o", capsize=3)
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=7)
    ax.set_xlabel("AUC of π̂ (per rollout) vs final correctness, 95% prompt bootstrap")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "auc.png", dpi=110)
    plt.close(fig)
    written.append(str(out / "auc.png"))
    for rep in reports:
        names = list(rep["pi_hat_hist"])
        fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.4), squeeze=False)
        for ax, name in zip(axes[0], names):
            h = rep["pi_hat_hist"][name]
            for key, label in (("correct", "right rollouts"), ("wrong", "wrong rollouts")):
                if h[key]:  # an empty class has no density
                    ax.hist(h[key], bins=np.linspace(0, 1, 21), density=True, alpha=0.6, label=label)
            ax.set_title(name, fontsize=8)
            ax.set_xlabel("π̂", fontsize=8)
        axes[0][0].legend(fontsize=6) if axes[0][0].get_legend_handles_labels()[0] else None
        fig.suptitle(rep["cell"], fontsize=9)
        fig.tight_layout()
        path = out / f"hist-{rep['cell']}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written


# ---------------------------------------------------------------------------------------------
# Driver
@dataclass
class Plan:
    chunks: list[int]
    teachers: list[str]
    random_at: list[int]  # C values that also get randomly placed anchors
    opd: bool = True
    contrast: bool = True


def run_task(s: Settings, plan: Plan, out: Path, stages: Stages, command: str, log=print) -> list[Path]:
    """Every stage of one task's cells, then the cells' reports."""
    models = Models(s, out)
    written = []
    try:
        tag = f"{s.task}"
        roll = stages.unit(f"rollouts-{tag}", lambda: make_rollouts(s, models))
        if roll["key"] != s.rollout_key():
            raise ValueError(f"{out}/rollouts-{tag}.json holds rollouts of {roll['key']}, not {s.rollout_key()}: "
                             "use another --out (or delete it to start over)")
        check_build(out / f"rollouts-{tag}.json", roll.get("student_build"), s.student)
        # teacher by teacher: the hinted cells are whole before a trained teacher that is not built yet stops the run
        cells = [(c, t, sel) for t in plan.teachers
                 for sel, cs in (("entropy", plan.chunks), ("random", plan.random_at)) for c in cs]
        for chunk, teacher, selection in cells:
            name = cell_name(s.task, chunk, teacher, selection)
            cont = stages.unit(f"continuations-{name}",
                               partial(make_continuations, s, models, roll, chunk, teacher, selection, log=log),
                               incomplete=failed_requests, derived=derived_units(name))
            check_build(out / f"continuations-{name}.json", cont.get("teacher_build"), cont["teacher_model"])
            check_sampling(out / f"continuations-{name}.json", cont, s)
            scores = {phi: stages.unit(score_unit(name, phi), partial(make_scores, models, cont, phi))
                      for phi in s.phis}
            teacher_lp = stages.unit(f"teacher-logprobs-{s.task}-{teacher}",
                                     partial(make_teacher_logprobs, s, models, roll, teacher)) if plan.opd else None
            if teacher_lp is not None:
                check_build(out / f"teacher-logprobs-{s.task}-{teacher}.json", teacher_lp.get("teacher_build"),
                            teacher_lp["teacher_model"])
            contrast, contrast_scores = None, {}
            if plan.contrast and selection == "entropy":
                contrast = stages.unit(contrast_unit(name), partial(make_contrast, s, models, roll, cont))
                changed = {"n": cont["n"], "forks": cont["forks"], "texts": cont["texts"]}
                chunks = [f["chunk"] for f in cont["forks"]]
                for p in contrast["pairs"]:
                    chunks[p["fork"]] = p["chunk"]
                only = {p["fork"] for p in contrast["pairs"]}
                changed["texts"] = [t if i in only else None for i, t in enumerate(cont["texts"])]
                contrast_scores = {
                    phi: stages.unit(contrast_score_unit(name, phi),
                                     partial(_contrast_scores, models, changed, phi, chunks, contrast["pairs"]))
                    for phi in s.phis}
            cost = {"rollout_seconds": roll["seconds"],
                    "stage_seconds": {"continuations": cont["seconds"],
                                      **{f"scores-{p}": v["seconds"] for p, v in scores.items()},
                                      **({"teacher-logprobs (per task and teacher)": teacher_lp["seconds"]}
                                         if teacher_lp else {}),
                                      **({"contrast": contrast["seconds"]} if contrast else {})},
                    "teacher_prompt_tokens": cont["prompt_tokens"],
                    "teacher_completion_tokens": cont["completion_tokens"],
                    # replies an earlier run left in the reply cache: their time and tokens are not in these figures
                    "teacher_requests": len(cont["forks"]), "teacher_cached_requests": cont.get("cached_requests", 0)}
            cost["seconds"] = round(sum(cost["stage_seconds"].values()), 1)
            rep = cell_report(s, roll, cont, scores, teacher_lp, contrast, contrast_scores, cost)
            rep["labels"] = [r["correct"] for r in roll["rollouts"]]
            rep["groups"] = [r["prompt"] for r in roll["rollouts"]]
            write_json(out / f"report-{name}.json", rep)
            (out / f"report-{name}.md").write_text(cell_markdown(rep, command))
            written.append(out / f"report-{name}.md")
            log(f"[signal] {name}: report written")
    finally:
        models.close()
    return written


def _contrast_scores(models: Models, changed: dict[str, Any], phi: str, chunks: list[str],
                     pairs: list[dict[str, Any]]) -> dict[str, Any]:
    scored = make_scores(models, changed, phi, chunks)
    return {"phi": phi, "values": [scored["values"][p["fork"]] for p in pairs]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python experiments/signal_probe.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=tuple(GRID), default="addition")
    p.add_argument("--chunk", type=int, nargs="+", default=None, help="C values (default: the grid's for the task)")
    p.add_argument("--teacher", choices=TEACHERS, nargs="+", default=None, help="default: hinted")
    p.add_argument("--student", default=None, help="default: warm:<task>")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--rollouts", type=int, default=4, help="rollouts per prompt")
    p.add_argument("--n", type=int, default=None,
                   help="teacher continuations per chunk (default 10; --smoke 2); N=4 is their first 4")
    p.add_argument("--m", type=int, default=2, help="chunks per rollout, as many as fit")
    p.add_argument("--temperature", type=float, default=None,
                   help="student sampling (default: 1.0 addition, 0.6 chained)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="default: 96 addition, 256 chained")
    p.add_argument("--phi", nargs="+", choices=PHIS, default=list(PHIS))
    p.add_argument("--random-at", type=int, nargs="*", default=None,
                   help="C values that also get random anchors (default: none; --grid: 8 addition, 16 chained)")
    p.add_argument("--no-opd", action="store_true")
    p.add_argument("--no-contrast", action="store_true")
    p.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto")
    p.add_argument("--reps", type=int, default=1000, help="bootstrap replicates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", action="store_true", help="the issue's grid: both tasks, both teachers, every C, "
                   "random anchors at one C per task")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: 2 prompts x 2 rollouts, N=2 (unless --n), "
                   "HF backend")
    p.add_argument("--stop-after", type=int, default=None, help="leave after this many stage units (tests)")
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "signal"))
    args = p.parse_args(argv)
    if args.grid and (args.chunk or args.teacher or args.student or args.random_at is not None):
        p.error("--grid chooses the tasks, C values, teachers, students and random anchors itself: "
                "leave out --chunk, --teacher, --student and --random-at")
    for flag in ("prompts", "rollouts", "n", "m", "reps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    for flag in ("chunk", "random_at"):
        if any(c < 1 for c in getattr(args, flag) or []):
            p.error(f"--{flag.replace('_', '-')} values must be at least 1, got {getattr(args, flag)}")
    if args.max_new_tokens < 0:
        p.error(f"--max-new-tokens must be positive (0: the task's default), got {args.max_new_tokens}")
    args.teacher = args.teacher or ["hinted"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python experiments/signal_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.prompts, args.rollouts, args.n, args.reps = 2, 2, args.n or 2, 200
        args.backend = "hf" if args.backend == "auto" else args.backend
    args.n = args.n or 10
    jobs = []
    for task in (GRID if args.grid else (args.task,)):
        chunks = args.chunk or list(GRID[task])
        random_at = [RANDOM_AT[task]] if args.grid else (args.random_at or [])
        teachers = list(TEACHERS) if args.grid else args.teacher
        s = Settings(task=task, student=args.student or f"warm:{task}",
                     prompts=args.prompts, rollouts=args.rollouts,
                     temperature=args.temperature,
                     max_new_tokens=args.max_new_tokens, num_chunks=args.m, num_continuations=args.n,
                     seed=args.seed, backend=args.backend, phis=tuple(args.phi), reps=args.reps)
        jobs.append((s, Plan(chunks, teachers, random_at, opd=not args.no_opd, contrast=not args.no_contrast)))
    stages = Stages(out, args.stop_after)
    try:
        for s, plan in jobs:
            run_task(s, plan, out, stages, command)
    except StopAfter as e:
        print(f"[signal] stopped before {e} after {len(stages.computed)} stage units (--stop-after)")
        return 3
    grid_summary(out, args.reps)
    for path in plots(out):
        print(f"[signal] plot {path}")
    print(f"[signal] summary: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
