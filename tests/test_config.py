"""Config: defaults, TOML + overrides, named errors for bad keys and values, --help."""

import subprocess
import sys
import typing

import pytest

from omniopd.config import Config, ConfigError, help_text, load_config
from omniopd.profiles import apply_demo


def test_defaults_are_valid_and_documented():
    cfg = load_config([])  # no arguments: the offline demo (omniopd/profiles.py)
    demo = apply_demo(Config())
    demo.train.defaults = "demo"
    assert cfg == demo
    text = help_text()
    # every field appears with its doc
    for section, fields in cfg.to_dict().items():
        for key in fields:
            assert f"--{section}.{key}=" in text


def test_toml_then_overrides_in_order(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[audit]\nchunk_len = 12\nsimilarity = "ned"\n[optim]\nlr = 3e-4\nbetas = [0.8, 0.9]\n')
    cfg = load_config(["--config", str(path), "--audit.chunk_len=5", "--train.steps", "7", "--resume"])
    assert cfg.audit.chunk_len == 5 and cfg.audit.similarity == "ned"
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.train.steps == 7 and cfg.checkpoint.resume is True


def test_optional_and_bool_values():
    cfg = load_config(["--audit.min_entropy=0.5", "--log.tensorboard=false"])
    assert cfg.audit.min_entropy == 0.5 and cfg.log.tensorboard is False
    assert load_config(["--audit.min_entropy=none"]).audit.min_entropy is None


@pytest.mark.parametrize("arg, needle", [
    ("--audit.chunk_lenn=3", "did you mean 'audit.chunk_len'"),
    ("--adit.chunk_len=3", "did you mean 'audit'"),
    ("--optim.lr=-1", "optim.lr=-1.0: must be > 0"),
    ("--audit.chunk_len=0", "audit.chunk_len=0: must be > 0"),
    ("--audit.chunk_len=2.5", "audit.chunk_len='2.5': expected an integer"),
    ("--audit.similarity=jaccard", "must be one of 'ned', 'rouge1', 'cosine', 'hybrid'"),
    ("--generation.top_p=1.5", "generation.top_p=1.5: must be in (0, 1]"),
    ("--log.tensorboard=maybe", "expected true or false"),
    ("steps=3", "unexpected argument 'steps=3'"),
])
def test_bad_input_names_the_key(arg, needle):
    with pytest.raises(ConfigError) as err:
        load_config([arg])
    assert needle in str(err.value)


def test_bad_toml_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[teacher]\nbase_ur = 'http://x'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown config key 'teacher\.base_ur'.*teacher\.base_url"):
        load_config(["--config", str(path)])


def test_train_help_lists_every_field():
    out = subprocess.run([sys.executable, "-m", "omniopd.train", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--audit.num_continuations=10" in out.stdout and "Dirichlet pseudo-votes" in out.stdout


def test_train_bad_key_exits_with_named_error():
    out = subprocess.run([sys.executable, "-m", "omniopd.train", "--train.stepz=3"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "train.stepz" in out.stderr and "train.steps" in out.stderr


def _ruled_fields() -> list[tuple[str, str]]:
    """(section.key, rule name) of every field that declares a range rule, read from the dataclasses."""
    import dataclasses

    out = []
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            if f.metadata.get("rule") is not None:
                out.append((f"{section.name}.{f.name}", f.metadata["rule"].__name__))
    return out


BAD_VALUE = {"positive": ("0", "must be > 0"), "non_negative": ("-1", "must be >= 0"),
             "unit_interval": ("1.5", "must be in (0, 1]"), "pipeline_depth": ("2", "only 0")}


@pytest.mark.parametrize("key, rule", _ruled_fields())
def test_every_range_rule_fails_at_load_naming_the_key(key, rule, tmp_path):
    value, message = BAD_VALUE[rule]
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}=.*{message.replace('(', '[(]')}"):
        load_config([f"--{key}={value}"])
    section, name = key.split(".")
    path = tmp_path / "bad.toml"
    path.write_text(f"[{section}]\n{name} = {value}\n")
    with pytest.raises(ConfigError, match=rf"bad\.toml: {key.replace('.', '[.]')}="):
        load_config(["--config", str(path)])


def test_the_range_rules_cover_the_old_name_sets():
    """Every bound that used to live in a far-away name set is now declared on its field."""
    rules = dict(_ruled_fields())
    # the 37 of the old name sets + 4 vLLM fields + train.pipeline, max_ratio, eval_every + objective.rl_beta
    # + teacher.input_tokens_per_minute, output_tokens_per_minute, thinking_budget, candidates_per_call
    assert len(rules) == 49
    assert rules["generation.top_p"] == rules["generation.gpu_memory_utilization"] == "unit_interval"
    assert rules["optim.lr"] == "positive" and rules["checkpoint.every"] == "non_negative"


def test_objective_targets_are_the_ones_the_loss_knows():
    """`objective.target`'s choices (config, no torch) and `losses.TARGETS` (the library's own check) agree."""
    from omniopd import losses
    from omniopd.config import ObjectiveConfig

    assert typing.get_args(typing.get_type_hints(ObjectiveConfig)["target"]) == losses.TARGETS


def test_sections_check_themselves_when_constructed():
    from omniopd.config import AuditConfig, GenerationConfig, ObjectiveConfig, OptimConfig

    with pytest.raises(ConfigError, match=r"generation\.n=0: must be > 0"):
        GenerationConfig(n=0)
    with pytest.raises(ConfigError, match=r"audit\.similarity='jaccard': must be one of"):
        AuditConfig(similarity="jaccard")
    with pytest.raises(ConfigError, match=r"optim\.betas=\[0\.9\]: two numbers"):
        OptimConfig(betas=[0.9])
    with pytest.raises(ConfigError, match=r"objective\.opd_exact_kl=true"):
        ObjectiveConfig(opd_exact_kl=True)
    assert GenerationConfig(n=3.0).n == 3 and isinstance(GenerationConfig(n=3.0).n, int)  # coerced to the type


@pytest.mark.parametrize("args, needle", [
    (["--objective.name=opd", "--teacher.kind=openai"], r"objective\.name=opd with teacher\.kind=openai"),
    (["--optim.betas=[0.9, 1.0]"], r"optim\.betas=\[0\.9, 1\.0\]"),
    (["--objective.opd_exact_kl=true"], r"objective\.opd_exact_kl=true"),
])
def test_cross_field_rules_fail_at_load(args, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(args)


def test_chunks_longer_than_the_response_limit_load():
    """No M * C <= max_new_tokens rule: a response gets as many chunks as fit (none when shorter than C)."""
    cfg = load_config(["--audit.num_chunks=10", "--audit.chunk_len=50", "--generation.max_new_tokens=32"])
    assert cfg.audit.num_chunks * cfg.audit.chunk_len > cfg.generation.max_new_tokens


def test_changes_in_place_are_caught_by_validate():
    """TOML and set_value change sections after construction: validate() re-runs every rule."""
    cfg = Config()
    cfg.objective.name, cfg.teacher.kind = "opd", "openai"  # fine alone, not together
    with pytest.raises(ConfigError, match=r"objective\.name=opd with teacher\.kind=openai"):
        cfg.validate()
    cfg = Config()
    cfg.train.steps = 0
    with pytest.raises(ConfigError, match=r"train\.steps=0: must be > 0"):
        cfg.validate()
