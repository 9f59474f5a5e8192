"""Config: defaults, TOML + overrides, named errors for bad keys and values, --help."""

import subprocess
import sys

import pytest

from omniopd.config import Config, ConfigError, help_text, load_config


def test_defaults_are_valid_and_documented():
    cfg = load_config([])
    assert cfg == Config()
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
    ("--audit.similarity=jaccard", "must be one of 'cosine', 'ned', 'hybrid'"),
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
    assert "--audit.num_continuations=4" in out.stdout and "Dirichlet pseudo-votes" in out.stdout


def test_train_bad_key_exits_with_named_error():
    out = subprocess.run([sys.executable, "-m", "omniopd.train", "--train.stepz=3"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "train.stepz" in out.stderr and "train.steps" in out.stderr
