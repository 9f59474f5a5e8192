"""Faults in the models, the teacher's mode, address and cache that the preflight refuses before any model loads
(README, "When a run goes wrong"). Light: the preflight is called in-process; nothing here loads a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback import ModelListing, closed_port

from omniopd.config import load_config
from omniopd.faults import RunFault
from omniopd.preflight import check_teacher, preflight
from omniopd.runlock import LOCK_NAME


def _cfg(tmp_path: Path, *args: str):
    model = tmp_path / "model"  # passes the folder check the trainer's loader makes (config.json present)
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return load_config([f"--model.student={model}", f"--teacher.model={model}", f"--log.dir={tmp_path / 'run'}",
                        "--teacher.cache=off", *args])


def _refused(cfg, *needles: str) -> str:
    with pytest.raises(RunFault) as caught:
        preflight(cfg, rank=0, say=lambda _: None)
    message = str(caught.value)
    for needle in needles:
        assert needle in message, message
    assert not (Path(cfg.log.dir) / LOCK_NAME).exists()  # a refused run releases the folder
    return message


@pytest.mark.parametrize("key", ["model.student", "model.reference", "teacher.model"])
def test_a_model_path_that_does_not_exist_or_is_not_a_model_folder_is_named(tmp_path, key):
    missing = tmp_path / "no-such-model"
    _refused(_cfg(tmp_path, f"--{key}={missing}"), f"{key}='{missing}'", "does not exist")
    bare = tmp_path / "bare"
    bare.mkdir()
    _refused(_cfg(tmp_path, f"--{key}={bare}"), f"{key}='{bare}'", "no config.json")


@pytest.mark.parametrize(("key", "alias"), [("model.student", "warm:chained"), ("teacher.model", "teacher:addition"),
                                             ("model.reference", "warm:addition")])
def test_a_finetune_alias_not_built_yet_is_named_with_the_command_that_builds_it(tmp_path, monkeypatch, key, alias):
    monkeypatch.setenv("OMNIOPD_CACHE", str(tmp_path / "cache"))
    kind, task = alias.split(":")
    _refused(_cfg(tmp_path, f"--{key}={alias}"), f"{key}='{alias}'", "not built yet",
             f"python -m omniopd.finetune build --task {task} --only {kind}")
    built = tmp_path / "cache" / "finetuned"
    from omniopd.finetune import output_dir

    out = output_dir(kind, task)
    assert out.parent == built
    out.mkdir(parents=True)
    (out / ".complete").write_text("done")
    preflight(_cfg(tmp_path, f"--{key}={alias}"), rank=0, say=lambda _: None).release()


def test_an_alias_fine_tuned_on_another_task_than_data_task_is_a_warning(tmp_path, monkeypatch):
    from omniopd.finetune import RECIPES, output_dir

    monkeypatch.setenv("OMNIOPD_CACHE", str(tmp_path / "cache"))
    for kind in ("warm", "teacher"):
        out = output_dir(kind, "addition")
        out.mkdir(parents=True)
        (out / ".complete").write_text("done")
        (out / "finetune.json").write_text(json.dumps({"recipe": RECIPES[f"{kind}:addition"].key()}))
    said: list[str] = []
    aliases = ["--model.student=warm:addition", "--teacher.kind=local", "--teacher.model=teacher:addition"]
    preflight(_cfg(tmp_path, *aliases, "--data.task=chained"), rank=0, say=said.append).release()
    assert said == ["warning: model.student='warm:addition' was fine-tuned on the addition task, and data.task=chained",
                    "warning: teacher.model='teacher:addition' was fine-tuned on the addition task, and "
                    "data.task=chained"]
    said.clear()
    preflight(_cfg(tmp_path, *aliases, "--data.task=addition"), rank=0, say=said.append).release()
    assert said == []


def test_an_alias_of_an_unknown_task_is_named_with_the_tasks_there_are(tmp_path):
    _refused(_cfg(tmp_path, "--model.student=warm:nosuch"), "model.student='warm:nosuch'", "unknown task 'nosuch'",
             "chained")


def test_an_api_teachers_model_name_is_not_taken_for_a_path(tmp_path, monkeypatch):
    """teacher.model is a provider's model name for API kinds: never checked as a folder."""
    cfg = _cfg(tmp_path, "--teacher.kind=anthropic", "--teacher.model=claude-sonnet-4-5",
               "--teacher.base_url=http://127.0.0.1:1")
    _refused(cfg, "teacher.base_url=")  # the address fails, not the model name


@pytest.mark.parametrize(("args", "needles"), [
    (["--teacher.kind=anthropic", "--teacher.model=claude-opus-4-6"],
     ["teacher.completion_mode=auto", "claude-opus-4-6", "teacher.completion_mode=instruct"]),
    (["--teacher.kind=anthropic", "--teacher.model=claude-opus-4-6", "--teacher.completion_mode=chat"],
     ["teacher.completion_mode=chat", "claude-opus-4-6"]),
    (["--teacher.kind=gemini", "--teacher.model=gemini-2.5-flash", "--teacher.completion_mode=completions"],
     ["teacher.completion_mode=completions", "gemini"]),
    (["--teacher.kind=openai", "--teacher.model=m", "--teacher.completion_mode=completions"],
     ["teacher.completion_mode=completions", "teacher.tokenizer"]),
])
def test_a_completion_mode_the_teacher_kind_refuses_is_named_before_any_request(tmp_path, args, needles):
    # An unreachable base_url: the mode is refused first, offline, without waiting on the address.
    cfg = _cfg(tmp_path, *args, "--teacher.base_url=http://127.0.0.1:1")
    message = _refused(cfg, *needles)
    # One rule: a teacher built without the trainer's preflight refuses the mode with the same words.
    from omniopd.rollout.teachers import build_teacher

    with pytest.raises(ValueError) as built:
        build_teacher(cfg.teacher, cache_path=None, tokenizer_path=cfg.teacher.tokenizer or None)
    assert str(built.value) == message


def test_anthropic_instruct_mode_and_models_that_prefill_are_not_refused_for_their_mode(tmp_path):
    for args in (["--teacher.model=claude-opus-4-6", "--teacher.completion_mode=instruct"],
                 ["--teacher.model=claude-opus-4-5"], ["--teacher.model=claude-sonnet-4-5-20250929"]):
        message = _refused(_cfg(tmp_path, "--teacher.kind=anthropic", "--teacher.base_url=http://127.0.0.1:1",
                                *args), "teacher.base_url=")
        assert "completion_mode" not in message


def test_a_teacher_cache_that_cannot_be_opened_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _refused(_cfg(tmp_path, f"--teacher.cache={blocker / 'cache.sqlite'}"), f"teacher.cache='{blocker}/cache.sqlite'",
             "cannot open or create")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    _refused(_cfg(tmp_path, f"--teacher.cache={folder}"), f"teacher.cache='{folder}'", "is a folder")
    _refused(_cfg(tmp_path, f"--teacher.cache={blocker}"), f"teacher.cache='{blocker}'", "not a database")
    assert blocker.read_text() == "not a folder"
    good = tmp_path / "caches" / "t.sqlite"
    preflight(_cfg(tmp_path, f"--teacher.cache={good}"), rank=0, say=lambda _: None).release()
    assert good.is_file()  # created, as the run would


def test_the_gemini_address_is_checked_like_the_other_api_addresses(tmp_path, monkeypatch):
    closed = closed_port()
    base = ["--teacher.kind=gemini", "--teacher.model=gemini-2.5-flash", "--teacher.api_key_env=OMNIOPD_TEST_GEMINI"]
    monkeypatch.setenv("OMNIOPD_TEST_GEMINI", "good-key")
    monkeypatch.delenv("GOOGLE_GENAI_API_VERSION", raising=False)  # google-genai's default: /v1 after the base
    with pytest.raises(RunFault, match=f"teacher.base_url=http://127.0.0.1:{closed}: no answer"):
        check_teacher(_cfg(tmp_path, *base, f"--teacher.base_url=http://127.0.0.1:{closed}"))
    with pytest.raises(RunFault, match="teacher.base_url='ftp://x': not an http"):
        check_teacher(_cfg(tmp_path, *base, "--teacher.base_url=ftp://x"))
    # The Gemini API's free model listing, refusing a request without the right key (403)
    server = ModelListing("/v1/models", {"models": [{"name": "models/gemini-2.5-flash"}]},
                          accepts=lambda headers: headers.get("x-goog-api-key") == "good-key")
    try:
        url = server.url
        check_teacher(_cfg(tmp_path, *base, f"--teacher.base_url={url}"))  # answers, key accepted
        monkeypatch.setenv("OMNIOPD_TEST_GEMINI", "wrong-key")
        with pytest.raises(RunFault, match=r"refused the key in \$OMNIOPD_TEST_GEMINI \(HTTP 403\)"):
            check_teacher(_cfg(tmp_path, *base, f"--teacher.base_url={url}"))
    finally:
        server.close()


def test_the_trainer_reports_an_unbuilt_teacher_in_one_line_with_exit_2_before_loading(tmp_path):
    """End to end: a real `python -m omniopd.train`, ended by the preflight in seconds, not minutes in."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMNIOPD_CACHE"] = str(tmp_path / "cache")  # nothing built there
    student = tmp_path / "student"  # passes the folder check, fails to load: loading it would end the run first
    student.mkdir()
    (student / "config.json").write_text("{}")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "omniopd.train", f"--log.dir={tmp_path / 'run'}",
                           f"--model.student={student}", "--teacher.model=teacher:chained", "--data.task=chained"],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("omniopd.train: error:")]
    assert len(errors) == 1 and "teacher.model='teacher:chained'" in errors[0] and "not built yet" in errors[0]
    assert time.monotonic() - t0 < 30  # the preflight: no model was loaded
    assert not (tmp_path / "run" / LOCK_NAME).exists() and not (tmp_path / "run" / "checkpoints").exists()
