"""The report half of `experiments/compare.py`: matrix.md and the PNGs from matrix.json's records (no runs, no
trainer imports), and the interval statistics they print."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

# Two-sided 95% Student-t quantiles by degrees of freedom (seeds - 1): the interval over seeds.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95% Student-t interval over seeds (nan with one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `p` measured on `n` items."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _cell(values: list[float], digits: int = 3) -> str:
    mean, half = interval(values)
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def report(results: dict, out: Path) -> str:
    """matrix.md (final held-out accuracy per row with 95% intervals over seeds, the change from the base
    student, repetition, teacher tokens, compute) and the PNGs, from matrix.json's records."""
    runs = list(results["runs"].values())
    if not runs:
        return "no finished runs yet\n"
    order = [r for r in results["row_order"] if any(x["row"] == r for x in runs)]
    base = [x["curve"][0]["accuracy"] for x in runs if x["curve"][0]["step"] == 0]
    lines = [f"Budget `{results['budget']}`: {' '.join(results['budget_args'])}", "",
             "Final greedy held-out accuracy (mean ± half-width of the 95% t-interval over seeds, then each "
             "seed's; one seed: no interval), its change from the base student in the same runs, repetition "
             "(repeated 4-grams) and length of the held-out responses, teacher tokens generated per run and the "
             "run's wall time.", "",
             "| row | seeds | accuracy | Δ vs base | repetition | length (tokens) | φ, steps 1–5 → last 5 | "
             "teacher tokens | s / step | wall (min) |", "|---|---|---|---|---|---|---|---|---|---|"]
    if base:
        lines.append(f"| base student | — | {statistics.fmean(base):.3f} | — | "
                     f"{statistics.fmean(x['curve'][0]['repetition'] for x in runs):.3f} | "
                     f"{statistics.fmean(x['curve'][0]['response_len'] for x in runs):.1f} | — | — | — | — |")
    for name in order:
        rs = sorted((x for x in runs if x["row"] == name), key=lambda x: x["seed"])
        delta = [x["final"]["accuracy"] - x["curve"][0]["accuracy"] for x in rs]
        seeds = ",".join(str(x["seed"]) for x in rs)
        accuracy = [x["final"]["accuracy"] for x in rs]
        each = f" ({', '.join(f'{a:.3f}' for a in accuracy)})" if len(rs) > 1 else ""  # few seeds: show them all
        lines.append(f"| {name} | {seeds} | {_cell(accuracy)}{each} | {_cell(delta)}"
                     f" | {_cell([x['final']['repetition'] for x in rs])}"
                     f" | {_cell([x['final']['response_len'] for x in rs], 1)} | {_phi(rs)}"
                     f" | {statistics.fmean(x['teacher_tokens'] for x in rs):.0f}"
                     f" | {statistics.fmean(x['step_s_mean'] for x in rs):.1f}"
                     f" | {statistics.fmean(x['wall_s'] for x in rs) / 60:.1f} |")
    problems = results.get("eval_size", 0)
    if base and problems:
        lo, hi = wilson(statistics.fmean(base), problems)
        lines += ["", f"The held-out set itself is a sample: at the base accuracy its 95% Wilson interval over "
                  f"{problems} problems is [{lo:.3f}, {hi:.3f}], so a single seed's change smaller than that "
                  "says nothing."]
    total_wall = sum(x["wall_s"] for x in runs)
    total_tokens = sum(x["teacher_tokens"] for x in runs)
    lines += ["", f"{len(runs)} runs finished of {results['planned']} planned; compute so far: "
              f"{total_wall / 3600:.2f} h of wall time, {total_tokens:.0f} teacher tokens."]
    missing = results.get("missing", [])
    if missing:
        lines.append(f"Not run yet: {', '.join(missing)}.")
    text = "\n".join(lines) + "\n"
    (out / "matrix.md").write_text(text)
    _plots(runs, order, out)
    return text


def _phi(records: list[dict]) -> str:
    pairs = [(x["phi_first5"], x["phi_last5"]) for x in records if x.get("phi_first5") is not None]
    if not pairs:
        return "—"
    return f"{statistics.fmean(a for a, _ in pairs):.3f} → {statistics.fmean(b for _, b in pairs):.3f}"


def line_styles(order: list[str]) -> tuple[dict[str, tuple], dict[str, str]]:
    """Each row's colour and line style: tab10 has ten colours, so rows past every tenth reuse them with the
    next style, and no two rows draw alike."""
    import matplotlib

    palette, patterns = matplotlib.colormaps["tab10"], ("-", "--", ":", "-.")
    if len(order) > 10 * len(patterns):
        raise ValueError(f"{len(order)} rows: the plots tell at most {10 * len(patterns)} apart")
    return ({name: palette(i % 10) for i, name in enumerate(order)},
            {name: patterns[i // 10] for i, name in enumerate(order)})


def _plots(runs: list[dict], order: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors, styles = line_styles(order)
    for key, label, fname in (("accuracy", "held-out accuracy (greedy)", "accuracy.png"),
                              ("repetition", "repeated 4-grams in held-out responses", "repetition.png")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name in order:
            rs = [x for x in runs if x["row"] == name]
            steps = sorted({p["step"] for x in rs for p in x["curve"]})
            by_step = [[p[key] for x in rs for p in x["curve"] if p["step"] == s and p[key] is not None]
                       for s in steps]
            mean = [statistics.fmean(v) for v in by_step]
            ax.plot(steps, mean, marker="o", ms=3, color=colors[name], ls=styles[name],
                    label=f"{name} ({len(rs)} seed{'s' if len(rs) > 1 else ''})")
            if len(rs) > 1:  # the band: lowest to highest seed at each step
                ax.fill_between(steps, [min(v) for v in by_step], [max(v) for v in by_step], color=colors[name],
                                alpha=0.15)
        base = [x["curve"][0][key] for x in runs if x["curve"][0]["step"] == 0 and x["curve"][0][key] is not None]
        if base:
            ax.axhline(statistics.fmean(base), color="gray", ls="--", lw=1, label="base student")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"{label} vs step (line: mean over seeds; band: min–max)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in order:
        for x in (x for x in runs if x["row"] == name):
            if x["teacher_tokens"] > 0:
                ax.plot([p["teacher_tokens"] for p in x["curve"]], [p["accuracy"] for p in x["curve"]], marker="o",
                        ms=3, color=colors[name], ls=styles[name], alpha=0.7, label=name if x["seed"] == min(
                            y["seed"] for y in runs if y["row"] == name) else None)
    ax.set_xlabel("teacher tokens generated (cumulative)")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title("accuracy vs teacher tokens spent (one line per seed; opd/rl generate none)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "teacher_tokens.png", dpi=110)
    plt.close(fig)
