"""Where a model's chained-task answers go wrong: every worked line `a op b = c` checked, per operation.

A wrong final answer on the chained task is either a wrong chain (a step skipped, a number copied wrong) or a
wrong piece of arithmetic inside a right chain. This decodes held-out problems greedily (transformers'
`generate`, deterministic) and recomputes each `a op b = c` it wrote: it counts the arithmetic slips (the
chains are for reading; `--show` prints the responses):

    python experiments/worked_lines.py teacher:chained --problems 10 \
        --out experiments/results/finetune/teacher-chained-lines.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

EQUATION = re.compile(r"(\d+) ([+\-×÷]) (\d+) = (-?\d+)")  # a wrong subtraction may go below zero


def check_line(a: int, op: str, b: int, c: int) -> bool:
    """Whether `a op b = c` is true in integers (a division must be exact)."""
    if op == "÷":
        return b != 0 and a % b == 0 and a // b == c
    return {"+": a + b, "-": a - b, "×": a * b}[op] == c


def line_errors(text: str) -> list[tuple[str, bool]]:
    """(operation, right) for every equation written in `text`."""
    return [(op, check_line(int(a), op, int(b), int(c))) for a, op, b, c in EQUATION.findall(text)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an alias (teacher:chained, warm:chained) or a model folder")
    ap.add_argument("--problems", type=int, default=10, help="the first N held-out chained problems")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, help="write the counts (and the responses) as JSON here")
    ap.add_argument("--show", action="store_true", help="print each problem and response")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omniopd.assets import student_path
    from omniopd.data import builtin_task, student_messages
    from omniopd.eval.harness import grade_response
    from omniopd.finetune import SYSTEM_PROMPT

    path = student_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    lines, wrong, solved, responses = Counter(), Counter(), 0, []
    problems = builtin_task("eval", "chained")[:args.problems]
    for problem in problems:
        ids = tokenizer.apply_chat_template(student_messages(problem, SYSTEM_PROMPT), add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        right = grade_response(problem, text, "math")[0]
        solved += right
        responses.append({"id": problem.id, "answer": problem.answer, "right": right, "response": text})
        if args.show:
            print(f"=== {problem.id} ({'right' if right else 'wrong'}, answer {problem.answer})\n"
                  f"{problem.question}\n{text}\n")
        for op, right in line_errors(text):
            lines[op] += 1
            wrong[op] += not right
    command = ["python", "experiments/worked_lines.py", args.model, "--problems", str(args.problems),
               "--max-new-tokens", str(args.max_new_tokens)]
    result = {"model": args.model, "path": path, "problems": len(problems), "solved": solved,
              "lines": dict(lines), "wrong": dict(wrong), "command": " ".join(command), "responses": responses}
    print(f"{args.model}: solved {solved}/{len(problems)}; worked lines wrong "
          f"{sum(wrong.values())}/{sum(lines.values())}: "
          + ", ".join(f"{op} {wrong[op]}/{lines[op]}" for op in "+-×÷" if lines[op]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
