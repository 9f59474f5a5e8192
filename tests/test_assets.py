"""Offline model assets: the converted SmolLM2 matches the GGUF model; MiniLM is real; conversion is atomic."""

import os
import subprocess
import sys
import time

import pytest
import torch

from omniopd import assets


@pytest.fixture(scope="module")
def student():
    return assets.load_student("smollm2-135m")


def _greedy(model, tokenizer, text: str, n: int = 12) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_converted_folder_matches_gguf_greedy(student):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assets.smollm2_gguf()
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model, tok = student
    prompt = "What is 23 + 48?"
    assert _greedy(model, tok, prompt) == _greedy(ref, ref_tok, prompt)
    # the folder is a plain safetensors HF folder with tied embeddings, as vLLM expects
    folder = assets.student_path()
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == \
        model.model.embed_tokens.weight.data_ptr()


def test_minilm_ranks_paraphrase_above_unrelated():
    model = assets.load_embedder("minilm")
    a, para, other = model.encode(["The cat sat on the mat.", "A cat was sitting on the rug.",
                                   "Quarterly revenue rose by eight percent."], convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity
    assert cos(a, para, dim=0) > cos(a, other, dim=0) + 0.3


def test_killed_conversion_leaves_no_broken_cache(tmp_path):
    env = dict(os.environ, OMNIOPD_CACHE=str(tmp_path))
    code = "from omniopd import assets; print(assets.student_path())"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(1.0)  # let it get into the middle of converting
    proc.kill()
    proc.wait()
    final = tmp_path / "smollm2-135m-instruct-v1"
    assert not final.exists(), "a killed conversion must not leave the final folder"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(final) and (final / ".complete").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(final)  # loads as a working model


@pytest.mark.parametrize("name, needle", [
    ("/nonexistent/model", "model path '/nonexistent/model' does not exist"),
    ("some-org/some-model", "HF_HUB_OFFLINE"),
])
def test_bad_model_names_say_why(name, needle):
    with pytest.raises(assets.AssetError, match=needle):
        assets.student_path(name)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(assets.AssetError, match="has no config.json"):
        assets.student_path(str(tmp_path))


def test_kernels_import_stays_light():
    code = "import sys, omniopd_kernels; assert 'transformers' not in sys.modules and 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
