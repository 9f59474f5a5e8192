"""The built-in chained task: word problems of three or four dependent operations, one worked line each.

The addition task's answers are ~85 tokens, too short for audited chunks of C=50. Here every problem starts
from a count and changes it three or four times (buy packs, give away, double, share equally); each step
needs the previous result, so a slip anywhere is visible in the final number. The worked solution writes
one line per operation and ends in `\\boxed{answer}`; the 2,048 training solutions run 120-216 tokens in
SmolLM2's tokenizer (median 164; tests/test_chained_task.py bounds them). Everything is integer arithmetic:
divisions are exact by construction, and no count ever drops to zero or below.

The numbers are small on purpose (version 2 of the task: single-digit packs, factors and divisors, counts
that stay mostly two-digit). Version 1 had products like 135 × 4 and divisions by up to 9: after 60 SFT steps
the 135M teacher wrote 14 of 47 worked lines wrong on 10 held-out problems (the chains themselves right) and
solved 9% of 32, so no student could be right "sometimes"; the difficulty meant to matter here is the chain,
not the digit arithmetic.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from omniopd.eval.data import Problem

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena",
          "Mira", "Nico", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq"]
_THINGS = ["apples", "marbles", "stickers", "books", "coins", "shells", "cards", "pencils", "stamps", "beads"]
_FRIENDS = ["friends", "classmates", "cousins", "neighbours", "teammates"]

# The same two splits as addition (train / held-out eval, disjoint streams); more training problems because
# the chained warm student's recipe samples from 2,048 (addition's recipes from 512).
CHAINED_SIZES = {"train": 2048, "eval": 128}
BENCHMARK = "builtin-chained"

# An operation: (question clause, worked line, new count), built from the count before it and a RNG;
# None when it does not apply to that count (a division that would not be exact, a loss that empties it).
Step = tuple[str, str, int]


def _buy_packs(n: int, rng: random.Random, name: str, thing: str) -> Step | None:
    packs, each = rng.randint(2, 5), rng.randint(2, 9)
    got = packs * each
    return (f"buys {packs} packs with {each} {thing} in each pack",
            f"{name} buys {packs} packs of {each} {thing}, which is {packs} × {each} = {got} {thing}. "
            f"Now {name} has {n} + {got} = {n + got} {thing}.", n + got)


def _receive(n: int, rng: random.Random, name: str, thing: str) -> Step | None:
    got = rng.randint(5, 40)
    return (f"receives {got} more {thing} as a gift",
            f"{name} receives {got} more {thing}, so {name} has {n} + {got} = {n + got} {thing}.", n + got)


def _give_away(n: int, rng: random.Random, name: str, thing: str) -> Step | None:
    if n < 15:
        return None
    lost = rng.randint(3, min(n - 5, 60))
    return (f"gives {lost} {thing} to a friend",
            f"{name} gives away {lost} {thing}, so {name} has {n} - {lost} = {n - lost} {thing} left.", n - lost)


def _multiply(n: int, rng: random.Random, name: str, thing: str) -> Step | None:
    if n > 40:
        return None
    factor = rng.choice([2, 3])
    word = {2: "doubles", 3: "triples"}[factor]
    return (f"{word} the collection",
            f"{name} {word} the {thing}, so {name} has {n} × {factor} = {n * factor} {thing}.", n * factor)


def _share(n: int, rng: random.Random, name: str, thing: str) -> Step | None:
    ways = [d for d in range(2, 6) if n % d == 0 and n // d >= 3]
    if not ways:
        return None
    d = rng.choice(ways)
    group = rng.choice(_FRIENDS)
    return (f"splits all the {thing} equally among {d} {group} including {name}, and keeps one share",
            f"{name} splits {n} {thing} into {d} equal shares, and {n} ÷ {d} = {n // d}, "
            f"so {name} keeps {n // d} {thing}.", n // d)


_OPERATIONS: list[Callable[[int, random.Random, str, str], Step | None]] = [
    _buy_packs, _receive, _give_away, _multiply, _share]


def chained_problem(seed: int, problem_id: str) -> Problem:
    """One problem, a function of `seed` only: 3 or 4 operations chained on a starting count."""
    rng = random.Random(seed)
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    count = start = rng.randint(12, 60)
    clauses, lines, kinds = [], [], []
    for _ in range(rng.choice([3, 4])):
        while True:  # some operation always applies: _receive never refuses
            op = rng.choice(_OPERATIONS)
            if kinds and op.__name__ == kinds[-1]:
                continue  # vary consecutive steps
            step = op(count, rng, name, thing)
            if step is not None:
                break
        clause, line, count = step
        clauses.append(clause)
        lines.append(f"Step {len(lines) + 1}: {line}")
        kinds.append(op.__name__)
    question = (f"{name} has {start} {thing}. First, {name} {clauses[0]}. "
                + " ".join(f"Then {name} {c}." for c in clauses[1:])
                + f" How many {thing} does {name} have at the end?")
    solution = (f"{name} starts with {start} {thing}, and we follow the changes one step at a time.\n"
                + "\n".join(lines)
                + f"\nSo at the end {name} has {count} {thing}. The answer is \\boxed{{{count}}}.")
    return Problem(id=problem_id, question=question, answer=str(count), solution=solution, benchmark=BENCHMARK)


# Seeds of the held-out split and of the generated training pool never meet: eval draws below 10**6,
# training problems from 10**6 up, and a training problem whose question equals a held-out one is skipped.
_EVAL_SEEDS, _TRAIN_SEEDS = 0, 1_000_000


def _draw(first_seed: int, size: int, prefix: str, exclude: set[str]) -> list[Problem]:
    problems, seen, seed = [], set(exclude), first_seed
    while len(problems) < size:
        p = chained_problem(seed, f"{prefix}-{len(problems)}")
        seed += 1
        if p.question not in seen:
            seen.add(p.question)
            problems.append(p)
    return problems


def chained_task(split: str, size: int | None = None) -> list[Problem]:
    """Deterministic problems of `split` ('train' or 'eval'); `size` beyond the default split size draws
    more training problems (the trained teacher's larger set), never one whose question is held out."""
    from omniopd.eval.data import DataError

    if split not in CHAINED_SIZES:
        raise DataError(f"builtin chained split '{split}': expected one of {sorted(CHAINED_SIZES)}")
    held_out = _draw(_EVAL_SEEDS, CHAINED_SIZES["eval"], "chained-eval", set())
    if split == "eval":
        return held_out if size is None else held_out[:size]
    return _draw(_TRAIN_SEEDS, size or CHAINED_SIZES["train"], "chained-train", {p.question for p in held_out})
