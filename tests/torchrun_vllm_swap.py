"""Run under `torchrun --nproc_per_node=2` by test_vllm_torchrun.py: the trainer's per-rank vLLM engines
(external_launcher) against HF `generate` with the same weights, after real training steps and swaps.

Each rank writes <out>/rank<R>.json: its greedy token ids from vLLM before and after each step, and
from HF generate on a model loaded with the gathered full weights after each step.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch


def main(out: str, steps: int, *overrides: str) -> None:
    from omniopd import assets
    from omniopd.config import load_config
    from omniopd.data import student_messages
    from omniopd.rollout.student.hf import HFGenerator
    from omniopd.rollout.student.weights import full_tensors
    from omniopd.trainer import Trainer

    cfg = load_config([f"--log.dir={out}", *overrides])
    greedy = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=cfg.generation.max_new_tokens)
    with Trainer(cfg) as trainer:
        rank, world = trainer.dist.rank, trainer.dist.world_size
        prompts = [student_messages(p, cfg.data.system_prompt) for p in trainer.eval_set[rank:8:world]]
        record = {"backend": trainer.generator.backend, "spmd": getattr(trainer.generator, "spmd", False),
                  "before": _ids(trainer.generator.generate(prompts, **greedy)), "steps": []}
        for _ in range(steps):
            trainer.train_step()  # ends with the weight swap into this rank's engine
            trainer.step += 1
            state = dict(full_tensors(trainer.model))  # every rank takes part in the gather
            reference, tokenizer = assets.load_student(trainer.student_path, cfg.model.dtype)
            missing, unexpected = reference.load_state_dict(state, strict=False)
            assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)  # tied head
            record["steps"].append({"vllm": _ids(trainer.generator.generate(prompts, **greedy)),
                                    "hf": _ids(HFGenerator(reference, tokenizer).generate(prompts, **greedy))})
        Path(out, f"rank{rank}.json").write_text(json.dumps(record))
        torch.distributed.barrier()


def _ids(result) -> list[list[int]]:
    return [s.token_ids for group in result for s in group]


if __name__ == "__main__":
    try:
        main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
    except BaseException:
        # Leave at once: a clean exit would wait in the trainer's closing barrier for ranks that are
        # still inside a collective of the step; torchrun then stops them.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
