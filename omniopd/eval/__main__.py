"""`python -m omniopd.eval`: pass@k of a model on math or code benchmarks, or grading of saved samples.

    python -m omniopd.eval --model smollm2-135m --suite math --data data/benchmarks/math/math500.jsonl \\
        --limit 50 --k 4 --max-new-tokens 512 --out runs/eval/smollm2
    python -m omniopd.eval --grade samples.jsonl --suite math --data data/benchmarks/math/math500.jsonl

Writes <out>/samples.jsonl (every sample with its verdict) and <out>/summary.json, prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time

from omniopd.eval.data import DataError, Problem, load_problems
from omniopd.eval.harness import (
    format_table,
    generate_records,
    grade_records,
    read_records,
    summarize,
    write_outputs,
)
from omniopd.eval.sandbox import KERNEL_LAYERS, IsolationError, SandboxLimits, isolation_plan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m omniopd.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="model to sample from: 'smollm2-135m' (bundled) or an HF folder / hub id")
    what.add_argument("--grade", metavar="SAMPLES.jsonl",
                      help="grade saved responses instead (one JSON line each: problem_id, response)")
    p.add_argument("--suite", choices=["math", "code"], default="math")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="JSONL or Parquet problem files")
    p.add_argument("--k", type=int, default=1, help="samples per problem (pass@1 is averaged over them)")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each file")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for k=1, else 0.6")
    p.add_argument("--top-p", type=float, default=None, help="default: 1.0 when greedy, else 0.95")
    p.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the generation engine")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate call")
    p.add_argument("--system-prompt", default=None, help="replace the suite's system message")
    p.add_argument("--out", default="runs/eval", help="output folder")
    p.add_argument("--question-field", default=None, help="field with the problem text")
    p.add_argument("--answer-field", default=None, help="math: answer field; code: tests field")
    p.add_argument("--id-field", default=None, help="field with the problem id (default: id/idx/... or row)")
    p.add_argument("--boxed-only", action="store_true",
                   help="math: only a \\boxed{} answer counts (no 'answer is X' / last-number fallbacks)")
    p.add_argument("--cpu-s", type=float, default=4.0, help="code: CPU seconds per test")
    p.add_argument("--wall-s", type=float, default=10.0, help="code: wall seconds per test")
    p.add_argument("--memory-mb", type=int, default=512, help="code: address-space limit per test")
    p.add_argument("--workers", type=int, default=0, help="code: tests run in parallel (default: CPU count)")
    p.add_argument("--require-isolation", action="store_true",
                   help="code: refuse to run unless every kernel layer of the sandbox is available "
                        f"({', '.join(KERNEL_LAYERS)}); without it a missing layer is a warning and is "
                        "recorded in summary.json")
    args = p.parse_args(argv)
    if args.k < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
        p.error("--k, --max-new-tokens and --limit must be >= 1")
    return args


def load_all(args: argparse.Namespace) -> dict[tuple[str, str], Problem]:
    problems: dict[tuple[str, str], Problem] = {}
    sources: dict[str, str] = {}
    for path in args.data:
        loaded = load_problems(path, args.suite, question_field=args.question_field,
                               answer_field=args.answer_field, id_field=args.id_field, limit=args.limit)
        benchmark = loaded[0].benchmark
        if benchmark in sources:
            raise DataError(f"{path}: benchmark name '{benchmark}' is also the stem of {sources[benchmark]}")
        sources[benchmark] = path
        problems.update({(p.benchmark, p.id): p for p in loaded})
    return problems


def generate(args: argparse.Namespace, problems: list[Problem]) -> list[dict]:
    import torch

    from omniopd.assets import student_path
    from omniopd.config import GenerationConfig
    from omniopd.rollout.student import build_generator

    temperature = args.temperature if args.temperature is not None else (0.0 if args.k == 1 else 0.6)
    top_p = args.top_p if args.top_p is not None else (1.0 if temperature == 0 else 0.95)
    cfg = GenerationConfig(backend=args.backend, n=args.k, temperature=temperature, top_p=top_p,
                           max_new_tokens=args.max_new_tokens, seed=args.seed)
    generator = build_generator(cfg, student_path(args.model), serving_threads=torch.get_num_threads())
    print(f"[eval] {len(problems)} problems x {args.k} samples, backend={generator.backend}, "
          f"temperature={temperature}, top_p={top_p}, max_new_tokens={args.max_new_tokens}", flush=True)
    try:
        return generate_records(generator, problems, args.suite, k=args.k, temperature=temperature, top_p=top_p,
                                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                system_prompt=args.system_prompt, progress=lambda m: print(m, flush=True))
    finally:
        generator.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limits = SandboxLimits(cpu_s=args.cpu_s, wall_s=args.wall_s, memory_mb=args.memory_mb,
                           require_isolation=args.require_isolation)
    extra = {}
    try:
        if args.suite == "code":  # before any work: a refused run should cost nothing
            plan = isolation_plan(limits)
            extra["sandbox"] = plan
            missing = [f"{name} ({plan[name]})" for name in KERNEL_LAYERS if plan[name] != "on"]
            if missing:
                print("[eval] warning: sandbox layers unavailable here: " + "; ".join(missing), file=sys.stderr)
        problems = load_all(args)
        start = time.monotonic()
        records = read_records(args.grade, problems) if args.grade else generate(args, list(problems.values()))
        gen_s = time.monotonic() - start
        grade_records(records, problems, args.suite, limits=limits, workers=args.workers,
                      boxed_only=args.boxed_only)
        summary = summarize(records)
    except (DataError, IsolationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    grade_s = time.monotonic() - start - gen_s
    out = write_outputs(args.out, records, {
        "benchmarks": summary,
        "config": {k: v for k, v in vars(args).items()},
        **extra,
        "seconds": {"generate" if not args.grade else "read": gen_s, "grade": grade_s}})
    print(format_table(summary))
    print(f"[eval] samples: {out / 'samples.jsonl'}  summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
