"""Evidence: OmniOPD vs OPD, SFT and RL on the built-in task, same data, steps and teacher, several seeds.

    .venv/bin/python experiments/compare.py                      # the committed run (results/ below)
    .venv/bin/python experiments/compare.py --steps 4 --seeds 0  # a quick look

Each (objective, seed) is one real `python -m omniopd.train` run with the shared settings below; the
base student's held-out accuracy is measured once (greedy decoding does not depend on the seed).
Writes `experiments/results/compare.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OBJECTIVES = ["sft", "opd", "rl", "omniopd"]
METRICS = [("eval/accuracy", "held-out accuracy"), ("eval/repetition_mean", "repetition (repeated 4-grams)"),
           ("eval/response_len_mean", "response length (tokens)")]


def shared_args(steps: int) -> list[str]:
    # Equal for every objective: prompts per step, rollouts per prompt, steps, learning rate, teacher.
    # Sized for a 2-core CPU (about an hour for 4 objectives x 3 seeds); on a GPU raise all of them.
    return [f"--train.steps={steps}", "--train.batch_size=2", "--generation.n=4", "--generation.max_new_tokens=80",
            "--optim.lr=2e-5", "--train.eval_size=64", "--checkpoint.every=0", "--checkpoint.keep=1",
            "--checkpoint.export=false", "--log.tensorboard=false"]


def run(out: Path, objective: str, seed: int, steps: int, eval_before: bool) -> dict:
    if (out / "summary.json").is_file():  # finished earlier: an interrupted comparison resumes here
        print(f"{objective:8s} seed {seed}: reusing {out / 'summary.json'}", flush=True)
        return json.loads((out / "summary.json").read_text())
    cmd = [sys.executable, "-m", "omniopd.train", f"--log.dir={out}", f"--objective.name={objective}",
           f"--train.seed={seed}", f"--train.eval_before={str(eval_before).lower()}", *shared_args(steps)]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["wall_s"] = time.time() - start
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # ~1.7 GB each; the comparison needs none
    print(f"{objective:8s} seed {seed}: accuracy {summary['after']['eval/accuracy']:.3f} "
          f"({summary['wall_s']:.0f}s)", flush=True)
    return summary


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(results: dict, out: Path) -> None:
    base = results["base"]
    rows = ["| objective | " + " | ".join(label for _, label in METRICS) + " | teacher tokens / run |",
            "|---|" + "---|" * (len(METRICS) + 1)]
    rows.append("| base student | " + " | ".join(f"{base[k]:.3f}" for k, _ in METRICS) + " | 0 |")
    for objective in OBJECTIVES:
        runs = results["runs"].get(objective, [])
        if not runs:
            continue
        cells = [spread([r["after"][k] for r in runs]) for k, _ in METRICS]
        tokens = statistics.mean(r["teacher"].get("completion_tokens", 0) for r in runs)
        rows.append(f"| {objective} | " + " | ".join(cells) + f" | {tokens:.0f} |")
    seeds = results["seeds"]
    text = (f"Built-in task, {results['steps']} steps, seeds {seeds} (mean ± sample std over seeds), "
            f"greedy held-out accuracy on {results['eval_size']} problems.\n\n" + "\n".join(rows) + "\n")
    (out / "compare.md").write_text(text)
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["base"] + [o for o in OBJECTIVES if results["runs"].get(o)]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 3.6))
    for ax, (key, label) in zip(axes, METRICS):
        for i, name in enumerate(names):
            values = [base[key]] if name == "base" else [r["after"][key] for r in results["runs"][name]]
            ax.bar(i, statistics.mean(values), color="lightgray" if name == "base" else "tab:blue", alpha=0.6)
            ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(label, fontsize=10)
    fig.suptitle(f"built-in task, {results['steps']} steps, seeds {seeds} (dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--objectives", nargs="+", default=OBJECTIVES, choices=OBJECTIVES)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "compare", help="per-run log folders")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    results: dict = {"steps": args.steps, "seeds": args.seeds, "eval_size": 64, "args": shared_args(args.steps),
                     "runs": {}}
    for seed in args.seeds:
        for objective in args.objectives:
            first = "base" not in results
            summary = run(args.runs / f"{objective}-seed{seed}", objective, seed, args.steps, eval_before=first)
            if first:
                results["base"] = summary["before"]
            results["runs"].setdefault(objective, []).append(summary)
            (args.out / "compare.json").write_text(json.dumps(results, indent=2))  # partial results survive
    report(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
