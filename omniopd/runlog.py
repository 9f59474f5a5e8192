"""Run logging on rank 0: one JSONL line per step, TensorBoard, Weights & Biases, a progress bar, plots."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from omniopd.config import Config

# The curves plotted at the end (present keys only), one panel each; tests/test_runlog.py checks that a real
# step emits every one of them.
PLOTTED = ["loss/total", "audit/pi_hat_mean", "audit/phi_mean", "kl/unaudited_mean", "rollout/reward_mean",
           "rollout/response_len_mean", "time/step_s", "eval/accuracy"]

Reduction = Literal["sum", "mean", "max"]
REDUCTIONS: tuple[Reduction, ...] = ("sum", "mean", "max")


class Metric(float):
    """A metric value that says how ranks combine it, declared where it is produced: 'sum' (counts, and
    values already divided by a global normalizer), 'max' (wall times: the slowest rank), 'mean' (the rest;
    a plain number is a mean). It is a float everywhere else."""

    reduce: Reduction

    def __new__(cls, value: float, reduce: Reduction = "mean") -> Metric:
        if reduce not in REDUCTIONS:
            raise ValueError(f"metric reduction {reduce!r}: expected one of {', '.join(REDUCTIONS)}")
        obj = super().__new__(cls, value)
        obj.reduce = reduce
        return obj

    def __reduce__(self) -> tuple:  # pickles (and so crosses ranks) with its reduction
        return Metric, (float(self), self.reduce)


def summed(value: float) -> Metric:
    return Metric(value, "sum")


def maximum(value: float) -> Metric:
    return Metric(value, "max")


def reduction(value: Any) -> Reduction:
    """A metric's declared reduction ('mean' for a plain number)."""
    return getattr(value, "reduce", "mean")


def combine_ranks(per_rank: Sequence[Mapping[str, float | None]]) -> dict[str, float]:
    """Every rank's metrics combined as each was declared; non-finite or missing values are left out (a
    key no rank has a finite value for is NaN). Ranks must agree on a key's reduction."""
    out: dict[str, float] = {}
    for key in sorted({k for metrics in per_rank for k in metrics}):
        present = [m[key] for m in per_rank if key in m]
        kinds = {reduction(v) for v in present if v is not None}
        if len(kinds) > 1:
            raise ValueError(f"metric '{key}': ranks declare different reductions {sorted(kinds)}")
        finite = [float(v) for v in present if v is not None and math.isfinite(v)]
        kind = kinds.pop() if kinds else "mean"
        if not finite:
            out[key] = math.nan
        elif kind == "sum":
            out[key] = math.fsum(finite)
        elif kind == "max":
            out[key] = max(finite)
        else:
            out[key] = math.fsum(finite) / len(finite)
    return out


class StepTimer:
    """Wall time per phase of one step (`with timer("forward"): ...`; a phase entered twice adds up), as
    metrics: each phase at the slowest rank's pace, the whole step, and every rank's tokens per second."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self, tokens: int) -> dict[str, float]:
        total = time.perf_counter() - self._start
        out = {f"time/{k}_s": maximum(v) for k, v in self.seconds.items()}  # the slowest rank sets the pace
        out["time/step_s"] = maximum(total)
        out["throughput/tokens_per_s"] = summed(tokens / total if total > 0 else math.nan)  # all ranks' tokens
        return out


def quiet_libraries(verbosity: str) -> None:
    """The libraries' console output at `log.verbosity`: their loggers at that level and, below 'info', no
    progress bars of theirs (vLLM, transformers and tqdm read these variables when they are imported, so
    this runs before them; the run's own bar opts back in). A variable the user already set is kept."""
    level = verbosity.upper()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", level)
    # vLLM logs a few lines while importing, before it configures its loggers from VLLM_LOGGING_LEVEL.
    vllm_level = os.environ["VLLM_LOGGING_LEVEL"].upper()
    if vllm_level in logging.getLevelNamesMapping():  # a user's odd value is vLLM's to reject
        logging.getLogger("vllm").setLevel(vllm_level)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", verbosity)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "INFO" if level == "DEBUG" else level)  # c10 warnings (NUMA, ...)
    if verbosity in ("error", "warning"):
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars
        os.environ.setdefault("TQDM_DISABLE", "1")  # every other library's bar (vLLM's checkpoint loading)
    if verbosity == "error":  # libraries' deprecation notices are for their developers, not a run's user
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(vllm|transformers|torch)\b")


class RunLog:
    """Writes nothing on ranks other than 0, so callers need no `if rank == 0`."""

    def __init__(self, cfg: Config, out_dir: Path, *, active: bool, total_steps: int, start_step: int):
        self.active, self.dir = active, out_dir
        self._tb = self._wandb = self._bar = None
        if not active:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        self._jsonl = (out_dir / "metrics.jsonl").open("a")
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"))
        if cfg.log.wandb:
            import wandb  # optional dependency, only when configured

            self._wandb = wandb.init(project=cfg.log.wandb, config=cfg.to_dict(), dir=str(out_dir), resume="allow")
        from tqdm import tqdm

        self._bar = tqdm(total=total_steps, initial=start_step, desc="omniopd", unit="step", dynamic_ncols=True,
                         disable=False)  # shown even where quiet_libraries turned the libraries' bars off

    def print(self, *args: Any) -> None:
        if self.active:
            (self._bar.write if self._bar else print)(" ".join(str(a) for a in args))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        clean = {k: (float(v) if isinstance(v, int | float) and math.isfinite(v) else None) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()
        for k, v in clean.items():
            if v is not None and self._tb is not None:
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if v is not None}, step=step)
        if self._bar is not None and "loss/total" in clean:
            self._bar.set_postfix({k.split("/")[-1]: f"{clean[k]:.3g}" for k in
                                   ("loss/total", "audit/pi_hat_mean", "rollout/reward_mean")
                                   if clean.get(k) is not None})
            self._bar.update(1)

    def close(self) -> None:
        if not self.active:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._bar is not None:
            self._bar.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """One merged row per step: the eval row shares its step with the train row, and a resumed run
    appends the steps it re-runs, so later values win key by key."""
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault(row["step"], {}).update(row)
    return [rows[s] for s in sorted(rows)]


def plot_metrics(metrics_path: Path, out: Path) -> Path | None:
    """One PNG with a panel per main curve (train steps; eval points where present)."""
    rows = read_metrics(metrics_path)
    keys = [k for k in PLOTTED if any(r.get(k) is not None for r in rows)]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
