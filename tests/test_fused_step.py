"""The fused training step (issue 11): no `[tokens, V]` tensor anywhere, the same numbers as the logits form,
and fp32 master weights that keep the updates pure bf16 rounds away."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from omniopd import assets
from omniopd.audit import AuditResult
from omniopd.batch import pack, response_logits
from omniopd.config import load_config
from omniopd.data import Problem
from omniopd.rollout.student import Sample
from omniopd.trainer import Trainer


@pytest.fixture(autouse=True)
def _no_leaked_process_group_env(monkeypatch):
    """An in-process Trainer writes its 1-rank process-group variables into os.environ; later tests' child
    processes must not inherit them (they would join a long-gone group's port)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "unset")  # records the original (usually absent) value for teardown
        monkeypatch.delenv(name)


class LargestOutput(TorchDispatchMode):
    """Records the largest storage any op's output holds (forward and backward) while active: allocations,
    not views (an `expand` of a small tensor allocates nothing)."""

    def __init__(self):
        super().__init__()
        self.numel, self.op, self.shape = 0, None, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                numel = t.untyped_storage().nbytes() // t.element_size()
                if numel > self.numel:
                    self.numel, self.op, self.shape = numel, str(func), tuple(t.shape)
        return out


def tiny_random_student(folder: Path, vocab: int | None = None) -> Path:
    """A 2-layer, 32-wide random Llama with the bundled tokenizer: [V, D] is far below [tokens, V]."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(assets.student_path())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


STEP = ["--train.batch_size=2", "--generation.n=2", "--generation.max_new_tokens=24", "--audit.chunk_len=4",
        "--audit.num_chunks=2", "--teacher.hint=solution",  # the hint is what makes the same tiny model a teacher
        "--audit.num_continuations=2", "--generation.backend=hf", "--log.tensorboard=false",
        "--audit.similarity=ned", "--train.eval_before=false", "--train.eval_after=false",
        "--checkpoint.export=false", "--log.plots=false", "--teacher.cache=off"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_random_student(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("objective", ["omniopd", "opd", "sft", "rl"])
def test_no_tokens_by_vocab_tensor_in_a_real_step(tiny, tmp_path, objective):
    """One real step (HF rollouts, the local teacher, backward, AdamW): no op output reaches [tokens, V]."""
    cfg = load_config([f"--model.student={tiny}", f"--teacher.model={tiny}", f"--log.dir={tmp_path}",
                       f"--objective.name={objective}", *STEP])
    with Trainer(cfg) as trainer:
        before = [p.detach().clone() for p in trainer.model.parameters()]
        # HF rollouts included: their log-probs are read one step at a time, not from [steps, rows, V] scores.
        with LargestOutput() as seen:
            metrics = trainer.train_step()
        vocab = trainer.model.config.vocab_size
        tokens = round(metrics["rollout/response_len_mean"] * 4)  # 4 rows: this step's response tokens
        assert tokens >= 8
        assert seen.numel < tokens * vocab, f"{seen.op} made {seen.shape} ({tokens} tokens, V={vocab})"
        if not (objective == "rl" and metrics["rl/advantage_std"] == 0):  # rl: no signal when all rewards tie
            assert any((a != p).any() for a, p in zip(before, trainer.model.parameters()))  # it trained
        # The check can fail: the logits form of the same rows trips it.
        batch = pack([Problem("p", "q", "1")] * 2, [Sample([1, 2, 3], [5] * tokens, "", "stop", [0.0] * tokens)] * 2,
                     0, torch.device("cpu"))
        with LargestOutput() as old, torch.no_grad():
            response_logits(trainer.model, batch)
        assert old.numel >= tokens * vocab


@pytest.fixture(scope="module")
def student_and_reference():
    """The bundled student, and a reference that differs from it (so the KL terms are not zero)."""
    import copy

    model, tok = assets.load_student()
    ref = copy.deepcopy(model).requires_grad_(False).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 2e-3 * p.abs().mean())
    return model, ref, tok


def _real_batch(tok):
    texts = [("What is 27 + 86?", " 27 + 86 = 113. The answer is \\boxed{113}."),
             ("Gus has 5 cards.", " He has 5 cards."),
             ("Add 48 and 39.", " 48 + 39 = 87, so \\boxed{87}")]
    samples = []
    for prompt, response in texts:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"]
        samples.append(Sample(p, r, response, "stop", [0.0] * len(r)))
    return pack([Problem(str(i), q, "1") for i, (q, _) in enumerate(texts)], samples, tok.pad_token_id,
                torch.device("cpu"))


def _old_logits(model, batch):
    """The step's former logits form: the full HF head on the response rows, `[B, T, V]` fp32."""
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    t = batch.tokens.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos, use_cache=False,
                logits_to_keep=t + 1)
    return out.logits[:, :t].float()


def _objective(name, student, ref, batch, teacher_logprobs):
    from omniopd import losses

    mask, tokens = batch.response_mask, batch.tokens
    if name == "omniopd":
        audit = AuditResult.given([(0, 2, 0.6), (2, 1, 0.1)], batch_size=3, chunk_len=3)
        return losses.omniopd(student, ref, tokens, mask, audit, beta=0.05, normalizer=3.0)
    if name == "opd":
        return losses.opd(student, tokens, mask, normalizer=3.0, teacher_logprobs=teacher_logprobs)
    if name == "sft":
        return losses.sft(student, tokens, mask, normalizer=3.0)
    return losses.rl(student, ref, tokens, mask, torch.tensor([1.0, 0.0, 1.0]), group_size=3, beta=0.05,
                     normalizer=3.0)


@pytest.mark.parametrize("objective", ["omniopd", "opd", "sft", "rl"])
def test_fused_step_equals_logits_form_on_the_bundled_student(student_and_reference, objective):
    """Loss, every parameter's gradient and every metric: hidden states + fused head == HF logits + kernels."""
    from omniopd.batch import model_head

    model, ref_model, tok = student_and_reference
    batch = _real_batch(tok)
    with torch.no_grad():  # the teacher's log-probs of the student's tokens (the reference model plays it)
        teacher = torch.log_softmax(_old_logits(ref_model, batch).double(), -1)
        teacher_logprobs = teacher.gather(-1, batch.tokens[..., None]).squeeze(-1).float()
    results = []
    for fused in (True, False):
        model.zero_grad(set_to_none=True)
        if fused:
            student = model_head(model, batch, torch.float32)
            with torch.no_grad():
                ref = model_head(ref_model, batch, torch.float32)
            assert student.hidden.shape[-1] == model.config.hidden_size  # no [B, T, V] in this form
        else:
            student = _old_logits(model, batch)
            with torch.no_grad():
                ref = _old_logits(ref_model, batch)
        loss, metrics = _objective(objective, student, ref, batch, teacher_logprobs)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((loss.item(), grads, metrics))
    (loss_f, grad_f, m_f), (loss_l, grad_l, m_l) = results
    assert loss_l != 0 and grad_l.norm() > 0
    # fp32 round-off of the two matmul orders: ~1e-6 per log-prob; opd's loss is a small difference of sums
    assert loss_f == pytest.approx(loss_l, rel=1e-5, abs=1e-5)
    assert ((grad_f - grad_l).norm() / grad_l.norm()).item() < 1e-4  # opd: 4.2e-5 measured
    assert m_f.keys() == m_l.keys()
    for key in m_l:
        assert m_f[key] == pytest.approx(m_l[key], rel=1e-5, abs=1e-5, nan_ok=True), key


@pytest.mark.parametrize("objective", ["rl", "omniopd"])
def test_the_reference_is_held_frozen_in_the_compute_dtype(tiny, tmp_path, objective):
    cfg = load_config([f"--model.student={tiny}", f"--teacher.model={tiny}", f"--log.dir={tmp_path}",
                       f"--objective.name={objective}", "--model.dtype=bfloat16", *STEP])
    with Trainer(cfg) as trainer:
        assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in trainer.ref_model.parameters())


@pytest.mark.parametrize("fsdp", [True, False])  # one rank: FSDP2's bf16 policy, or autocast
def test_fp32_master_weights_keep_updates_that_pure_bf16_loses(tiny, tmp_path, fsdp):
    """model.dtype=bfloat16 computes in bf16 but AdamW updates fp32 master weights: an update of ~1e-6 per
    element (lr 1e-6, Adam's first step is ±lr) moves every weight; applied to bf16 weights it rounds away."""
    cfg = load_config([f"--model.student={tiny}", f"--teacher.model={tiny}", f"--log.dir={tmp_path}",
                       "--objective.name=sft", "--model.dtype=bfloat16", "--optim.lr=1e-6", "--optim.grad_clip=0",
                       f"--parallel.fsdp={fsdp}", *STEP])
    with Trainer(cfg) as trainer:
        assert trainer.sharded == fsdp
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights
        assert trainer.ref_model is None  # sft has no KL anchor: no reference copy is held
        start = [p.detach().clone() for p in trainer.model.parameters()]
        metrics = trainer.train_step()
        assert metrics["train/grad_norm"] > 0
        moved = [(p != s).float().mean().item() for p, s in zip(trainer.model.parameters(), start)]
    assert min(moved) > 0.5, moved  # every tensor moved (elements with a zero gradient stay)
    # The same kind of update on bf16 weights: AdamW's first step is ±lr per element, |w| ~ 0.02 >> lr / 2^-8.
    pure = [s.to(torch.bfloat16).requires_grad_() for s in start]
    for p in pure:
        p.grad = torch.ones_like(p)
    torch.optim.AdamW(pure, lr=1e-6, weight_decay=0.0).step()
    lost = [(p.detach() == s.to(torch.bfloat16)).float().mean().item() for p, s in zip(pure, start)]
    assert sum(lost) / len(lost) > 0.9, lost  # most bf16 weights did not move at all


def test_a_failure_inside_a_step_is_the_error_the_user_sees(tiny, tmp_path, monkeypatch):
    """An OOM in the trainer forward, then a process group that would fail (a broken device): the clean-up
    issues no collective and the OOM is what propagates, not an NCCL-style error from the barrier."""
    import torch.distributed as dist

    cfg = load_config([f"--model.student={tiny}", f"--teacher.model={tiny}", f"--log.dir={tmp_path}", *STEP])
    barriers = []

    def broken_barrier(*args, **kwargs):
        barriers.append(1)
        raise RuntimeError("NCCL error: unhandled cuda error (the device is gone)")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 37.10 GiB")

    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"), Trainer(cfg) as trainer:
        trainer.model.get_decoder().register_forward_pre_hook(out_of_memory)
        monkeypatch.setattr(dist, "barrier", broken_barrier)
        trainer.fit()
    assert barriers == [] and not dist.is_initialized()  # no collective, and the group is gone


def test_packed_forward_equals_each_sequence_alone(student_and_reference):
    """Sequences packed back to back with restarting position ids (transformers' SDPA masks them apart):
    every response row's hidden state equals the sequence run alone, unpadded."""
    from omniopd.batch import response_hidden

    model, _, tok = student_and_reference
    rows = [([1, 2, 3], [4, 5]), (list(range(10, 20)), list(range(30, 38))), ([7, 8, 9, 10], [11, 12, 13]),
            ([5, 6], [7])]
    samples = [Sample(p, r, "", "stop", [0.0] * len(r)) for p, r in rows]
    batch = pack([Problem(str(i), "q", "1") for i in range(4)], samples, tok.pad_token_id, torch.device("cpu"))
    packed = batch.packed  # built once, by pack
    assert packed.input_ids.shape == (2, 18)  # the 18-token sequence alone, the other three share a row
    assert packed.padding_frac == pytest.approx(1 - 33 / 36)  # padded to [4, 10 + 8] it would be 1 - 33 / 72
    with torch.no_grad():
        got = response_hidden(model, batch)
        for i, (prompt, response) in enumerate(rows):
            alone = model.model(torch.tensor([prompt + response]), use_cache=False).last_hidden_state[0]
            torch.testing.assert_close(got[i, :len(response)], alone[len(prompt) - 1:-1], atol=1e-4, rtol=1e-4)


def test_two_ranks_fsdp_bf16_policy_trains(tiny, tmp_path):
    """torchrun, 2 gloo ranks: FSDP2 with MixedPrecisionPolicy(bf16 params, fp32 reduce), the packed fused step."""
    import math
    import os
    import subprocess
    import sys

    from omniopd.runlog import read_metrics

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "omniopd.train",
           f"--model.student={tiny}", f"--teacher.model={tiny}", f"--log.dir={tmp_path}", "--model.dtype=bfloat16",
           "--train.steps=1", *STEP]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    step = next(r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] == 1)
    assert math.isfinite(step["loss/total"]) and step["train/grad_norm"] > 0
    assert "train/skipped_nonfinite" not in step
