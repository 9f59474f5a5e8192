"""Prompt sets: local JSONL/Parquet, HF `datasets` when online, and the built-in offline task.

A `Problem` (`omniopd.eval.data`, the one type the trainer, the eval harness and the CLI share) is what
one prompt needs: the question, its checkable final answer, and (optionally) a reference solution that a
teacher may be shown. Files are read by the one `load_problems`; a malformed row is an error naming the
file and the row; nothing is skipped silently.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Iterator

from omniopd.chained_task import chained_task
from omniopd.config import DataConfig
from omniopd.eval.data import DataError, Problem, load_problems, math_answer
from omniopd.eval.harness import build_prompt

__all__ = ["DataError", "Problem", "PromptStream", "builtin_task", "load_problems", "load_split",
           "student_messages", "teacher_messages"]


# ---------------------------------------------------------------------------------------------
# Built-in task: two-digit addition with carries, phrased as short word problems. SmolLM2-135M
# solves a bare "a + b" only ~12% of the time, the carry is where it forks, and a teacher shown the
# worked solution can continue any prefix correctly: weak but not hopeless, and checkable exactly.
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena"]
_THINGS = ["apples", "marbles", "stickers", "books", "coins", "shells", "cards", "pencils"]


def _carry_pairs(seed: int) -> Iterator[tuple[int, int]]:
    """Endless two-digit pairs whose ones digits carry: the step the student gets wrong."""
    rng = random.Random(seed)
    while True:
        a, b = rng.randint(11, 89), rng.randint(11, 89)
        if (a % 10) + (b % 10) >= 10:
            yield a, b


def _addition_problem(a: int, b: int, problem_id: str) -> Problem:
    rng = random.Random(a * 100 + b)  # wording depends only on the numbers
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    ones, tens, total = a % 10 + b % 10, a // 10 + b // 10 + 1, a + b
    prompt = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
    solution = (f"{name} starts with {a} {thing} and gets {b} more, so we add {a} + {b}. "
                f"Ones: {a % 10} + {b % 10} = {ones}, write {ones % 10} and carry 1. "
                f"Tens: {a // 10} + {b // 10} + 1 = {tens}. "
                f"So {a} + {b} = {total}. The answer is \\boxed{{{total}}}.")
    return Problem(id=problem_id, question=prompt, answer=str(total), solution=solution, benchmark="builtin")


BUILTIN_SIZES = {"train": 512, "eval": 128}
BUILTIN_TASKS = ("addition", "chained")
# Two-digit pairs (11..89) whose ones digits carry: the whole addition problem space.
_ADDITION_POOL = sum(1 for a in range(11, 90) for b in range(11, 90) if a % 10 + b % 10 >= 10)


def _unique_pairs(pairs: Iterator[tuple[int, int]], size: int, exclude: set) -> list[tuple[int, int]]:
    chosen: dict[tuple[int, int], None] = {}
    for pair in pairs:
        if pair not in exclude:
            chosen[pair] = None
        if len(chosen) == size:
            return list(chosen)
    raise AssertionError("unreachable: the pair stream is endless")


def builtin_task(split: str, task: str = "addition", size: int | None = None) -> list[Problem]:
    """Deterministic problems of a built-in `task` ('addition' or 'chained'); `train` never contains a
    problem of `eval`. `size` beyond the split's default draws more training problems (the fine-tunes'
    larger sets); None = the split's default size."""
    if task == "chained":
        return chained_task(split, size)
    if task != "addition":
        raise DataError(f"builtin task '{task}': expected one of {list(BUILTIN_TASKS)}")
    if split not in BUILTIN_SIZES:
        raise DataError(f"builtin split '{split}': expected one of {sorted(BUILTIN_SIZES)}")
    held_out = _unique_pairs(_carry_pairs(98765), BUILTIN_SIZES["eval"], exclude=set())
    if size is not None and size > _ADDITION_POOL - BUILTIN_SIZES["eval"]:
        raise DataError(f"builtin addition: {size} training problems asked, only "
                        f"{_ADDITION_POOL - BUILTIN_SIZES['eval']} distinct carry pairs exist")
    pairs = held_out if split == "eval" else _unique_pairs(_carry_pairs(1234), size or BUILTIN_SIZES["train"],
                                                           exclude=set(held_out))
    return [_addition_problem(a, b, f"builtin-{split}-{i}") for i, (a, b) in enumerate(pairs)]


# ---------------------------------------------------------------------------------------------
def load_split(spec: str, cfg: DataConfig, split: str) -> list[Problem]:
    """`builtin`, a local file, or `hf:<dataset>[:<split>]` (only when online)."""
    if spec == "builtin":
        return builtin_task(split, cfg.task)
    if spec.startswith("hf:"):
        import datasets  # optional, online only

        name, _, hf_split = spec[3:].partition(":")
        rows = datasets.load_dataset(name, split=hf_split or split)
        return [Problem(id=f"{name}-{i}", question=str(r[cfg.prompt_field]),
                        answer=math_answer(r, f"{spec}:row {i}", cfg.answer_field),
                        solution=str(r.get(cfg.solution_field) or ""), benchmark=name) for i, r in enumerate(rows)]
    return load_problems(spec, "math", question_field=cfg.prompt_field, answer_field=cfg.answer_field,
                         solution_field=cfg.solution_field or None)


def student_messages(problem: Problem, system_prompt: str) -> list[dict[str, str]]:
    """The chat the student sees: the eval harness's math prompt, so training and evaluation prompts match."""
    return build_prompt(problem, "math", system_prompt)


def teacher_messages(problem: Problem, system_prompt: str, hint: str) -> list[dict[str, str]]:
    """The chat the teacher sees: the student's, plus the reference solution when `hint='solution'`.

    The solution goes into the user turn: measured on the built-in task, SmolLM2 as teacher follows it
    there far more often (13/32 correct, greedy) than in the system message (8/32; student alone 3/32).
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    user = problem.question
    if hint == "solution" and problem.solution:
        user += "\n\nHere is a correct worked solution. Follow it step by step:\n" + problem.solution
    return messages + [{"role": "user", "content": user}]


class PromptStream:
    """Endless, seeded, resumable order over a problem list: an epoch is a fresh permutation."""

    def __init__(self, problems: list[Problem], seed: int):
        if not problems:
            raise DataError("empty prompt set")
        self.problems, self.seed = problems, seed
        self.position = 0  # problems consumed so far, across epochs

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self, size: int) -> list[Problem]:
        batch = []
        for _ in range(size):
            epoch, offset = divmod(self.position, len(self.problems))
            batch.append(self.problems[self._order(epoch)[offset]])
            self.position += 1
        return batch

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of the problems' contents in file order: an edited prompt file of the same length is another
        prompt set, which a resumed position would silently index into. Computed once: every save records it."""
        digest = hashlib.sha256()
        for p in self.problems:
            digest.update(json.dumps([p.id, p.question, p.answer, p.solution]).encode())
        return digest.hexdigest()[:16]

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "size": len(self.problems),
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != len(self.problems) or state["seed"] != self.seed:
            raise DataError(f"resume: the prompt set changed (saved {state['size']} problems, seed {state['seed']}; "
                            f"now {len(self.problems)}, seed {self.seed})")
        saved = state.get("fingerprint")  # absent in checkpoints written before it was recorded
        if saved is not None and saved != self.fingerprint:
            raise DataError(f"resume: the prompt set changed (the same {len(self.problems)} rows in number, other "
                            "contents or order: an edited file, or a change to the built-in task's generator or "
                            "to answer parsing); resume with the prompts the run started with, or start a new run")
        self.position = int(state["position"])
