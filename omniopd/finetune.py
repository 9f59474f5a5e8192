"""Warm students and trained teachers: plain SFT of the bundled SmolLM2-135M on a built-in task's worked solutions.

    python -m omniopd.finetune build --task chained            # warm:chained, then teacher:chained
    python -m omniopd.finetune build --task addition --only warm
    python -m omniopd.finetune eval warm:chained                # accuracy, cut-off -> experiments/results/

The bundled student is almost never right in its own rollouts (0.4% at T=1 on the addition task), so no
on-policy signal has anything to reinforce. A *warm student* is a short fine-tune on the task's training split
(meant to be right in 15-50% of its rollouts at the training temperature); a *trained teacher* is a longer one
with more steps and a higher learning rate, each of its problems seen once (meant to reach >= 80% on addition
and >= 50% on chained), half of them shown with the reference-solution hint the trainer gives a local
teacher, so it knows the task with and without it.

This is its own small SFT loop (next-token loss on the worked solution, prompt tokens masked), not the
trainer's objectives: a recipe (`RECIPES`) fixes the data, order, steps and learning rate, so a build is
reproducible. It checkpoints every `save_every` steps under `$OMNIOPD_CACHE/finetuned/.<name>.partial/` and a
rerun resumes there; the finished model is written to a temporary folder and renamed into place, after which
`model.student=warm:<task>` / `teacher.model=teacher:<task>` (`omniopd.assets.student_path`) load it and a
rerun of `build` finds it cached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from omniopd.assets import AssetError
from omniopd.data import BUILTIN_TASKS, Problem, PromptStream, builtin_task, student_messages, teacher_messages

KINDS = ("warm", "teacher")
SYSTEM_PROMPT = "Solve the problem. Put the final answer in \\boxed{}."  # DataConfig's default: prompts match


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides a fine-tuned model: two builds of one recipe train on the same batches."""

    kind: str
    task: str
    problems: int  # training problems drawn from the task's generator (warm: its training split)
    steps: int  # optimizer steps
    batch_size: int = 8  # sequences per step
    lr: float = 5e-5  # AdamW peak; linear warm-up over the first 5% of steps, then linear decay to 0
    hint_fraction: float = 0.0  # share of examples whose prompt carries the reference-solution hint
    seed: int = 0
    save_every: int = 10  # checkpoint period in steps (resumability; does not change the result)
    # Bump when what the recipe produces changes (the loop, or its task's data) so a stale build is not taken
    # for a current one: it names the cache folder and is part of the key. Chained: "2" is task version 2.
    version: str = "1"

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.task}"

    def key(self) -> dict[str, Any]:
        """The fields that change the trained weights (not `save_every`)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "save_every"}


# Sized to this machine's measured SFT speed (37-77 tokens/s on 2 shared cores in experiments/results/finetune/
# throughput.md, 104-127 in the builds themselves): ~22k, 42k, 92k and 174k tokens, under an hour. Teachers see
# each of their problems once (problems = steps x batch), warm students a slice of the training split. Both draw
# from the training generator's one stream, so a teacher's problems are the first `problems` of it.
RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("warm", "addition", problems=512, steps=20),
    Recipe("warm", "chained", problems=2048, steps=20, version="2"),
    Recipe("teacher", "addition", problems=480, steps=60, lr=1e-4, hint_fraction=0.5),
    Recipe("teacher", "chained", problems=480, steps=60, lr=1e-4, hint_fraction=0.5, version="2"),
]}


class FinetuneError(RuntimeError):
    """A fine-tune that cannot run or a name that does not resolve; the message says what to do."""


def parse_alias(name: str) -> tuple[str, str] | None:
    """(kind, task) for 'warm:<task>' / 'teacher:<task>'; None for anything else (paths, hub ids)."""
    kind, sep, task = name.partition(":")
    if not sep or kind not in KINDS:
        return None
    if task not in BUILTIN_TASKS:
        raise FinetuneError(f"'{name}': unknown task '{task}' (built-in tasks: {', '.join(BUILTIN_TASKS)})")
    return kind, task


def build_command(kind: str, task: str) -> str:
    return f"python -m omniopd.finetune build --task {task} --only {kind}"


def output_dir(kind: str, task: str) -> Path:
    from omniopd.assets import cache_dir

    return cache_dir() / "finetuned" / f"{kind}-{task}-v{RECIPES[f'{kind}:{task}'].version}"


def _partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def is_built(out: Path) -> bool:
    return (out / ".complete").is_file()


def resolve(name: str) -> str:
    """The built folder of alias `name`, or an error saying it is not built and the command that builds it."""
    kind, task = parse_alias(name) or (None, None)
    if kind is None:
        raise FinetuneError(f"'{name}' is not a fine-tune alias (warm:<task> or teacher:<task>)")
    out = output_dir(kind, task)
    if not is_built(out):
        raise FinetuneError(f"model '{name}' is not built yet (no {out}): build it with "
                            f"`{build_command(kind, task)}` (resumable: it checkpoints as it goes)")
    _warn_if_stale(name, out)
    return str(out)


_warned_stale: set[Path] = set()


def _warn_if_stale(name: str, out: Path) -> None:
    """Say once per process when the build under an alias is not of the current recipe: a build with overridden
    steps (tests, timing) is legitimate, but one left over from an older recipe must not pass for the current."""
    current = RECIPES[name].key()
    built = _recipe_of(out) or {}  # no readable record of its recipe: every field differs
    differ = ", ".join(f"{k} {built.get(k)!r} (recipe: {v!r})" for k, v in current.items() if built.get(k) != v)
    if not differ or out in _warned_stale or os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 says it
        return
    _warned_stale.add(out)
    print(f"omniopd: warning: '{name}' at {out} was not built with the current recipe ({differ}); "
          f"`{build_command(*parse_alias(name))} --rebuild` builds it", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Data
def training_problems(recipe: Recipe) -> list[Problem]:
    """The first `problems` of the task's training stream (never a held-out problem): the training split for a
    warm student, the same generator asked for `problems` for a teacher."""
    if recipe.kind == "warm":
        train = builtin_task("train", recipe.task)
        if recipe.problems > len(train):
            raise FinetuneError(f"recipe {recipe.name}: {recipe.problems} problems, the training split has "
                                f"{len(train)}")
        return train[:recipe.problems]
    return builtin_task("train", recipe.task, size=recipe.problems)


def example_messages(problem: Problem, recipe: Recipe) -> list[dict[str, str]]:
    """The chat of one example: the student's prompt, or the teacher's with the hint for a fixed share."""
    with_hint = random.Random(f"{recipe.seed}:{problem.id}").random() < recipe.hint_fraction
    return teacher_messages(problem, SYSTEM_PROMPT, "solution") if with_hint else student_messages(problem,
                                                                                                   SYSTEM_PROMPT)


def encode(tokenizer, messages: list[dict[str, str]], solution: str) -> tuple[list[int], int]:
    """(token ids of prompt + worked solution + end of turn, prompt length): the loss covers what follows
    the prompt, ending with the end-of-turn token so the model learns to stop."""
    from omniopd.rollout.student.base import chat_prompt_ids

    prompt = chat_prompt_ids(tokenizer, messages)
    response = tokenizer.encode(solution, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt + response, len(prompt)


def data_stats(recipe: Recipe, tokenizer) -> dict[str, Any]:
    """Sizes of a recipe's data in the student's tokenizer (the build's cost is proportional to them)."""
    lengths = [encode(tokenizer, example_messages(p, recipe), p.solution) for p in training_problems(recipe)]
    response = sorted(len(ids) - n for ids, n in lengths)
    total = sum(len(ids) for ids, _ in lengths)
    mean_seq = total / len(lengths)
    return {"problems": len(lengths), "mean_sequence_tokens": mean_seq,
            "response_tokens_min_median_max": [response[0], response[len(response) // 2], response[-1]],
            "tokens_per_epoch": total, "epochs": recipe.steps * recipe.batch_size / len(lengths),
            "tokens_trained": round(recipe.steps * recipe.batch_size * mean_seq)}


# ---------------------------------------------------------------------------------------------
# The SFT loop
def _save_atomically(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, math.ceil(0.05 * total))
    return (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


def build(recipe: Recipe, *, log=print, stop_after: int | None = None, command: str | None = None) -> Path:
    """Fine-tune `recipe` into its cache folder (resuming a partial build) and return the folder.

    `stop_after`: leave after this many steps of this call with a checkpoint written (what a kill between
    checkpoints amounts to, without the lost steps); the next call resumes.
    """
    import torch

    from omniopd.assets import load_student, student_path

    out = output_dir(recipe.kind, recipe.task)
    if is_built(out):
        built = _recipe_of(out)
        if built != recipe.key():
            raise FinetuneError(f"{out} holds {recipe.name} built with another recipe ({built}); delete it (or "
                                f"pass --rebuild) to build {recipe.key()}")
        log(f"[finetune] {recipe.name}: cached at {out}")
        return out
    partial = _partial_dir(out)
    partial.mkdir(parents=True, exist_ok=True)
    ckpt_path = partial / "checkpoint.pt"

    torch.manual_seed(recipe.seed)
    base = student_path("smollm2-135m")
    model, tokenizer = load_student(base, "float32", "cpu")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    problems = training_problems(recipe)
    encoded = {p.id: encode(tokenizer, example_messages(p, recipe), p.solution) for p in problems}
    stream = PromptStream(problems, seed=recipe.seed)
    state = {"step": 0, "seconds": 0.0, "tokens": 0, "response_tokens": 0, "losses": []}
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["recipe"] != recipe.key():
            log(f"[finetune] {recipe.name}: the checkpoint in {partial} is of another recipe; starting over")
        else:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["torch_rng"])
            state = ckpt["state"]
            log(f"[finetune] {recipe.name}: resuming at step {state['step']}/{recipe.steps}")
    stream.position = state["step"] * recipe.batch_size
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def checkpoint() -> None:
        _save_atomically({"recipe": recipe.key(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "torch_rng": torch.get_rng_state(), "state": state}, ckpt_path)

    done_here = 0
    while state["step"] < recipe.steps:
        started = time.monotonic()
        batch = [encoded[p.id] for p in stream.next_batch(recipe.batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, n_prompt) in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            labels[row, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
            mask[row, :len(ids)] = 1
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * _lr_factor(state["step"], recipe.steps)
        # The vocabulary projection only where a response token is predicted: a [B, T, V] logits tensor over
        # prompts and padding would be most of the memory and a fifth of the compute.
        hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        predicted = targets != -100
        logits = model.lm_head(hidden[predicted])
        loss = torch.nn.functional.cross_entropy(logits, targets[predicted])  # mean over response tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state["step"] += 1
        state["seconds"] += time.monotonic() - started
        state["tokens"] += int(mask.sum())
        state["response_tokens"] += int(predicted.sum())
        state["losses"].append(round(loss.item(), 4))
        done_here += 1
        if state["step"] % 10 == 0 or state["step"] == recipe.steps:
            log(f"[finetune] {recipe.name}: step {state['step']}/{recipe.steps} loss {loss.item():.4f} "
                f"{state['tokens'] / state['seconds']:.0f} tokens/s, {state['seconds'] / 60:.1f} min")
        stopping = stop_after is not None and done_here >= stop_after
        if (state["step"] % recipe.save_every == 0 or stopping) and state["step"] < recipe.steps:
            checkpoint()
        if stopping and state["step"] < recipe.steps:
            log(f"[finetune] {recipe.name}: stopped at step {state['step']} (checkpoint in {partial})")
            return partial

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = {"recipe": recipe.key(), "command": command, "base": base, "steps": state["step"],
                "train_seconds": state["seconds"],
                "tokens": state["tokens"], "response_tokens": state["response_tokens"],
                "tokens_per_second": state["tokens"] / max(state["seconds"], 1e-9), "losses": state["losses"],
                "torch_threads": torch.get_num_threads()}
        (tmp / "finetune.json").write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / ".complete").write_text(recipe.version)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
    log(f"[finetune] {recipe.name}: built {out} in {state['seconds'] / 60:.1f} min of training")
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation of a built model
def problem_bootstrap_interval(right_per_problem: list[int], samples_per_problem: int, *, resamples: int = 2000,
                               seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the accuracy, resampling problems (a problem's samples are not
    independent draws, so a per-sample binomial interval would be too narrow)."""
    rng = random.Random(seed)
    n = len(right_per_problem)
    means = sorted(sum(right_per_problem[rng.randrange(n)] for _ in range(n)) / (n * samples_per_problem)
                   for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


def _recipe_of(model_path: str | Path) -> dict[str, Any] | None:
    """The recipe a build recorded in its finetune.json; None for a model without a readable one."""
    try:
        recipe = json.loads((Path(model_path) / "finetune.json").read_text())["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return recipe if isinstance(recipe, dict) else None


def _row_key(model_path: str, recipe: dict[str, Any] | None, task: str, problems: int, n: int, temperature: float,
             limit: int, hint: bool, seed: int, backend: str) -> dict[str, Any]:
    """What decides an evaluation row: a finished row with this key is reused by a rerun."""
    return {"path": model_path, "recipe": recipe, "task": task, "problems": problems, "n": n,
            "temperature": temperature, "max_new_tokens": limit, "hint": hint, "seed": seed, "backend": backend}


def evaluate(name: str, task: str, *, problems: int, k: int, temperatures: list[float], limits: list[int],
             hints: list[bool], backend: str = "auto", seed: int = 0, rows_file: Path | None = None,
             log=print) -> dict[str, Any]:
    """Accuracy and cut-off fraction of `name` on the task's held-out split, per (hint, temperature, limit),
    with one generator for all of them.

    Greedy rows take one sample per problem (they are deterministic); sampled rows `k`. A response is cut
    off when it reached the limit without ending its turn; every verdict comes from the eval grader.
    Each finished row is appended to `rows_file` (when given) and a rerun reuses the rows it finds there, so
    an evaluation stopped part-way loses at most the row in progress.
    """
    import torch

    from omniopd.assets import student_path
    from omniopd.config import GenerationConfig
    from omniopd.eval.harness import grade_response
    from omniopd.eval.mathgrade import MathVerifier
    from omniopd.rollout.student import build_generator

    path = student_path(name)
    held_out = builtin_task("eval", task)[:problems]
    done: list[dict[str, Any]] = []
    if rows_file is not None and rows_file.is_file():
        done = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    plan = [(hint, t, limit, 1 if t == 0 else k) for hint in hints for t in temperatures for limit in limits]
    recipe = _recipe_of(path)
    keys = [_row_key(path, recipe, task, len(held_out), n, t, limit, hint, seed, backend)
            for hint, t, limit, n in plan]
    found = {json.dumps(r["key"], sort_keys=True): r["row"] for r in done if "key" in r}
    rows: list[dict[str, Any] | None] = [found.get(json.dumps(key, sort_keys=True)) for key in keys]
    chats = {hint: [teacher_messages(p, SYSTEM_PROMPT, "solution") if hint else student_messages(p, SYSTEM_PROMPT)
                    for p in held_out] for hint in hints}
    generator = verifier = None
    try:
        for i, ((hint, temperature, limit, n), key) in enumerate(zip(plan, keys)):
            if rows[i] is not None:
                log(f"[finetune] {name} T={temperature} limit={limit} hint={hint}: reused from {rows_file}")
                continue
            if generator is None:
                generator = build_generator(GenerationConfig(backend=backend, seed=seed, max_model_len=2048), path,
                                            serving_threads=torch.get_num_threads())
                verifier = MathVerifier()
            started = time.monotonic()
            outputs = generator.generate(chats[hint], n, temperature=temperature, top_p=1.0, max_new_tokens=limit)
            right_per_problem = [sum(grade_response(p, s.text, "math", verifier=verifier)[0] for s in group)
                                 for p, group in zip(held_out, outputs)]
            samples = [s for group in outputs for s in group]
            right = sum(right_per_problem)
            cut = sum(s.finish_reason == "length" for s in samples)
            low, high = problem_bootstrap_interval(right_per_problem, n)
            row = {"temperature": temperature, "max_new_tokens": limit, "hint": hint, "problems": len(held_out),
                   "samples": len(samples), "accuracy": right / len(samples), "accuracy_ci95": [low, high],
                   "problems_with_a_right_sample": sum(r > 0 for r in right_per_problem),
                   "cut_off": cut / len(samples), "mean_tokens": sum(len(s.token_ids) for s in samples) / len(samples),
                   "seconds": round(time.monotonic() - started, 1), "backend": generator.backend}
            rows[i] = row
            if rows_file is not None:
                rows_file.parent.mkdir(parents=True, exist_ok=True)
                with rows_file.open("a") as f:
                    f.write(json.dumps({"key": key, "row": row}) + "\n")
            log(f"[finetune] {name} T={temperature} limit={limit} hint={hint}: right {row['accuracy']:.3f} "
                f"[{low:.3f}, {high:.3f}], cut off {row['cut_off']:.3f} ({len(samples)} samples, "
                f"{row['seconds']:.0f} s)")
    finally:
        if verifier is not None:
            verifier.close()
        if generator is not None:
            generator.close()
    return {"model": name, "path": path, "task": task, "rows": rows}


def result_stem(model: str, path: str) -> str:
    return model.replace(":", "-") if parse_alias(model) else Path(path).name


def write_results(result: dict[str, Any], out_dir: Path, command: str) -> Path:
    """<kind>-<task>.json and .md under `out_dir`, each carrying the command that made them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result_stem(result["model"], result["path"])
    meta_file = Path(result["path"]) / "finetune.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta.pop("losses", None)
    result = {"command": command, "finetune": meta, **result}
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# {result['model']} on the {result['task']} task", "", f"Command: `{command}`", ""]
    built_by = meta.get("command") or (build_command(*parse_alias(result["model"])) if parse_alias(result["model"])
                                       else None)
    if meta and built_by:
        lines += [f"Built by: `{built_by}`", ""]
    if meta:
        lines += [f"Fine-tune: {meta['steps']} steps, {meta['tokens']} tokens, {meta['train_seconds'] / 60:.1f} min "
                  f"of training ({meta['tokens_per_second']:.0f} tokens/s, {meta.get('torch_threads')} threads); "
                  f"recipe `{json.dumps(meta['recipe'])}`", ""]
    lines += ["| temperature | response limit | hint | samples | right | 95% interval (problems resampled) "
              "| cut off | mean tokens | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ci = r.get("accuracy_ci95")
        interval = f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%" if ci else "–"
        lines.append(f"| {r['temperature']} | {r['max_new_tokens']} | {'yes' if r['hint'] else 'no'} | {r['samples']} "
                     f"| {100 * r['accuracy']:.1f}% | {interval} | {100 * r['cut_off']:.1f}% | {r['mean_tokens']:.0f} "
                     f"| {r.get('seconds', '–')} |")
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return out_dir / f"{stem}.json"


# ---------------------------------------------------------------------------------------------
def _recipe_from_args(kind: str, args: argparse.Namespace) -> Recipe:
    recipe = RECIPES[f"{kind}:{args.task}"]
    changes = {k: getattr(args, k) for k in ("steps", "batch_size", "problems", "lr", "save_every")
               if getattr(args, k) is not None}
    return dataclasses.replace(recipe, **changes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m omniopd.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fine-tune (or find cached) the warm student and/or trained teacher of a task")
    b.add_argument("--task", choices=BUILTIN_TASKS, required=True)
    b.add_argument("--only", choices=KINDS, default=None, help="build one of the two (default: both)")
    b.add_argument("--rebuild", action="store_true", help="replace a cached build of another recipe")
    b.add_argument("--stats", action="store_true", help="print the recipes' data sizes and exit")
    for flag, kind in [("--steps", int), ("--batch-size", int), ("--problems", int), ("--lr", float),
                       ("--save-every", int)]:
        b.add_argument(flag, type=kind, default=None, help="override the recipe (tests, timing runs)")
    b.add_argument("--stop-after", type=int, default=None, help="leave after N steps with a checkpoint (timing)")
    e = sub.add_parser("eval", help="accuracy and cut-off fraction of a model on a task's held-out split")
    e.add_argument("model", help="warm:<task>, teacher:<task>, smollm2-135m or an HF folder")
    e.add_argument("--task", choices=BUILTIN_TASKS, default=None, help="default: the alias's task")
    e.add_argument("--problems", type=int, default=64)
    e.add_argument("--k", type=int, default=4, help="samples per problem at a temperature above 0")
    e.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    e.add_argument("--max-new-tokens", type=int, nargs="+", default=None,
                   help="response limits (default: 96 for addition, 256 for chained)")
    e.add_argument("--hint", choices=["none", "solution", "both"], default="none",
                   help="prompt with the teacher's reference-solution hint")
    e.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto")
    e.add_argument("--out", default="experiments/results/finetune")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m omniopd.finetune " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "build":
            kinds = [args.only] if args.only else list(KINDS)
            if args.stats:
                from transformers import AutoTokenizer

                from omniopd.assets import student_path

                tokenizer = AutoTokenizer.from_pretrained(student_path("smollm2-135m"))  # no model loaded
                for kind in kinds:
                    print(json.dumps({_recipe_from_args(kind, args).name: data_stats(_recipe_from_args(kind, args),
                                                                                      tokenizer)}))
                return 0
            for kind in kinds:
                recipe = _recipe_from_args(kind, args)
                out = output_dir(kind, args.task)
                if args.rebuild and is_built(out):
                    shutil.rmtree(out)
                build(recipe, stop_after=args.stop_after, command=command)
            return 0
        alias = parse_alias(args.model)
        task = args.task or (alias[1] if alias else None)
        if task is None:
            raise FinetuneError(f"--task is needed for model '{args.model}' (not a warm:/teacher: alias)")
        limits = args.max_new_tokens or [96 if task == "addition" else 256]
        hints = {"none": [False], "solution": [True], "both": [False, True]}[args.hint]
        from omniopd.assets import student_path

        out_dir = Path(args.out)
        rows_file = out_dir / f".{result_stem(args.model, student_path(args.model))}.rows.jsonl"
        result = evaluate(args.model, task, problems=args.problems, k=args.k, temperatures=args.temperatures,
                          limits=limits, hints=hints, backend=args.backend, rows_file=rows_file)
        print(f"[finetune] results: {write_results(result, out_dir, command)}")
        return 0
    except (FinetuneError, AssetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
