#!/usr/bin/env python3
"""Peak memory of one training step on CPU: the fused step vs the former logits path (issue 11, item 7).

A tiny random-initialised Llama (2 layers, width 64) with a 262,144-token vocabulary, where the
`[tokens, V]` logits dominate everything else. One step = student forward + reference forward + the OmniOPD
loss (forks at fixed anchors, π̂ given) + backward + AdamW step, on random response tokens; rollouts and the
teacher are not part of it (they do not change between the two paths). Each path runs in a fresh process;
its extra peak is the kernel's resident high-water mark (VmHWM, reset just before the step through
/proc/self/clear_refs) minus the resident size before it.

Prints one markdown table and writes it to bench/results/cpu_step_memory.md (or --out).
Usage: python bench/cpu_step_memory.py [--rows 4] [--tokens 256] [--vocab 262144] [--small] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def one_step(path: str, rows: int, tokens: int, vocab: int) -> dict[str, float]:
    """Run one step in this process; returns its extra peak resident memory and time."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from omniopd import losses
    from omniopd.audit import AuditResult
    from omniopd.batch import model_head, pack
    from omniopd.data import Problem
    from omniopd.rollout.student import Sample

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model, ref = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(1)
    samples = [Sample(torch.randint(vocab, (16,), generator=gen).tolist(),
                      torch.randint(vocab, (tokens,), generator=gen).tolist(), "", "length", [0.0] * tokens)
               for _ in range(rows)]
    batch = pack([Problem(str(i), "q", "1") for i in range(rows)], samples, 0, torch.device("cpu"))
    audit = AuditResult.given([(i, a, 0.3) for i in range(rows) for a in (0, tokens // 2)], rows, chunk_len=8)

    def step() -> float:
        if path == "fused":
            head = model_head(model, batch, torch.float32)
            with torch.no_grad():
                ref_head = model_head(ref, batch, torch.float32)
        else:  # the former step: fp32 [B, T, V] logits of student and reference, the logits-form loss
            head = _old_logits(model, batch)
            with torch.no_grad():
                ref_head = _old_logits(ref, batch)
        loss, _ = losses.omniopd(head, ref_head, batch.tokens, batch.response_mask, audit, beta=0.05,
                                 normalizer=float(rows))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up: lazy imports, AdamW state, allocator pools
    _reset_peak()
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    return {"extra_bytes": max(0, _status_kb("VmHWM") - before) * 1024, "seconds": seconds,
            "params": sum(p.numel() for p in model.parameters())}


def _old_logits(model, batch):
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    t = batch.tokens.shape[1]
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos,
                 use_cache=False, logits_to_keep=t + 1).logits[:, :t].float()


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def measure(path: str, rows: int, tokens: int, vocab: int) -> dict[str, float]:
    """`one_step` in a fresh process (peaks of one path never hide the other's)."""
    cmd = [sys.executable, __file__, "--child", path, f"--rows={rows}", f"--tokens={tokens}", f"--vocab={vocab}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode:
        raise RuntimeError(f"{path} step failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--small", action="store_true", help="2 rows x 64 tokens (a smoke run for the tests)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=["fused", "logits"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small:
        args.rows, args.tokens = 2, 64
    if args.child:
        print(json.dumps(one_step(args.child, args.rows, args.tokens, args.vocab)))
        return 0
    fused, logits = (measure(p, args.rows, args.tokens, args.vocab) for p in ("fused", "logits"))
    n = args.rows * args.tokens
    one = n * args.vocab * 4 / MiB
    text = "\n".join([
        f"## One OmniOPD step on CPU: {args.rows} x {args.tokens} response tokens, V={args.vocab:,}, "
        f"random 2-layer width-64 Llama ({fused['params'] / 1e6:.1f} M parameters, mostly the tied head)",
        "",
        f"One fp32 `[tokens, V]` tensor here is {one:.0f} MiB.",
        "",
        "| step | extra peak RSS (MiB) | in fp32 [tokens, V] tensors | seconds |",
        "|---|---|---|---|",
        *(f"| {name} | {r['extra_bytes'] / MiB:.0f} | {r['extra_bytes'] / MiB / one:.2f} | {r['seconds']:.2f} |"
          for name, r in (("fused (hidden states + fused head)", fused), ("former logits path", logits))),
        "",
        f"fused / logits: peak {fused['extra_bytes'] / max(logits['extra_bytes'], 1):.3f}, "
        f"time {fused['seconds'] / logits['seconds']:.2f}",
    ]) + "\n"
    print(text)
    out = args.out or REPO / "bench" / "results" / f"cpu_step_memory{'_small' if args.small else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
