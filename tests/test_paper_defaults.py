"""The library's defaults are the paper's (docs/design.md §1 "Defaults" is the table checked here); the offline
demo's values and the first line that names them; `--help` offers the paper's values and its ablations."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from omniopd.config import Config, load_config
from omniopd.profiles import DEMO, PAPER, differences, first_line, get

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def _table() -> dict[str, tuple[str, str, str]]:
    """`{key: (paper, ours, demo)}` from the Defaults table: cells are `value` in backticks or 'not stated'."""
    text = DESIGN.read_text()
    section = text[text.index("### Defaults"):text.index("### Ablations")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`[a-z_]+\.[a-z_]+`", cells[0]):
            rows[cells[0].strip("`")] = tuple(cells[1:4])
    return rows


def _value(cell: str):
    inner = cell.strip("`")
    try:
        return ast.literal_eval(inner)
    except (ValueError, SyntaxError):
        return inner


def test_design_table_matches_the_code():
    rows = _table()
    assert set(PAPER) | set(DEMO) <= set(rows), sorted(set(PAPER) | set(DEMO) - set(rows))
    library, demo = Config(), load_config([])
    assert demo.train.defaults == "demo"
    for key, (paper, ours, demo_cell) in rows.items():
        assert get(library, key) == _value(ours), key
        assert get(demo, key) == _value(demo_cell), key
        if key in PAPER:
            assert _value(paper) == PAPER[key] == get(library, key), key
        else:
            assert paper == "not stated", key


def test_the_paper_s_values_are_the_library_defaults():
    cfg = Config()
    assert (cfg.audit.num_chunks, cfg.audit.num_continuations, cfg.audit.chunk_len) == (10, 10, 50)
    assert (cfg.audit.alpha, cfg.objective.beta, cfg.audit.similarity) == (1.0, 0.1, "ned")
    assert cfg.teacher.hint == "none" and cfg.audit.selection == "entropy"
    assert cfg.generation.max_new_tokens >= cfg.audit.num_chunks * cfg.audit.chunk_len
    assert differences(cfg) == {}


@pytest.mark.parametrize("args", [["--model.student=/some/other/student"], ["--data.train=/my/problems.jsonl"],
                                  ["--data.task=chained"], ["--train.defaults=paper"]])
def test_anything_but_the_demo_runs_the_paper_s_values(args):
    cfg = load_config(args)
    assert cfg.train.defaults == "paper" and differences(cfg) == {}
    assert first_line(cfg).startswith("omniopd: the paper's method values (")


@pytest.mark.parametrize("args", [
    ["--teacher.kind=openai", "--teacher.base_url=http://127.0.0.1:8000/v1"],  # teacher.model left at its default
    ["--teacher.kind=anthropic", "--teacher.model=claude-haiku"],
    ["--teacher.model=teacher:chained"],  # local, but not the bundled model
])
def test_the_demo_needs_the_bundled_local_teacher_too(args):
    """The demo's values (a hinted teacher, small M, N, C) exist for the bundled 135M teacher; an API teacher or
    another local one on the built-in task gets the paper's."""
    assert load_config([]).train.defaults == "demo"
    cfg = load_config(args)
    assert cfg.train.defaults == "paper" and differences(cfg) == {}


def _named_keys(line: str) -> list[str]:
    """The config keys a first line names, before its 'Why:'."""
    return re.findall(r"\b([a-z_]+\.[a-z_]+)=", line.split(" Why: ")[0])


@pytest.mark.parametrize("args", [[], ["--audit.chunk_len=25", "--objective.beta=0"],
                                  ["--generation.max_new_tokens=64"], ["--audit.alpha=0"],
                                  ["--train.defaults=paper", "--audit.num_chunks=3"]])
def test_summary_differences_record_everything_the_first_line_names(args):
    cfg = load_config(args)
    named, diffs = _named_keys(first_line(cfg)), differences(cfg)
    assert named and len(named) == len(set(named))
    assert set(named) == set(diffs), (named, sorted(diffs))


def test_a_config_file_runs_the_paper_s_values_for_what_it_leaves_unset(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[train]\nsteps = 3\n")
    cfg = load_config(["--config", str(path)])
    assert cfg.train.defaults == "paper" and cfg.train.steps == 3 and differences(cfg) == {}


def test_the_demo_names_every_difference_first_and_what_the_run_sets_wins():
    cfg = load_config([])
    line = first_line(cfg)
    assert line.startswith("omniopd: the offline demo differs from the paper: ")
    for key, demo in DEMO.items():
        assert f"{key}={demo.value}" in line and demo.why in line, key
    assert set(differences(cfg)) == set(DEMO)  # generation.max_new_tokens too: the paper does not state it
    assert differences(cfg)["generation.max_new_tokens"] == {"value": 96, "paper": "not stated", "ours": 1024,
                                                            "why": DEMO["generation.max_new_tokens"].why}
    mine = load_config(["--audit.chunk_len=25", "--objective.beta=0"])  # still the demo, two keys set
    diffs = differences(mine)
    assert diffs["audit.chunk_len"] == {"value": 25, "paper": 50, "why": "set by this run"}
    assert diffs["objective.beta"]["why"] == "set by this run" and mine.audit.num_chunks == 2


def test_help_shows_the_paper_s_defaults_and_the_ablations():
    out = subprocess.run([sys.executable, "-m", "omniopd.train", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for shown in ("--audit.num_chunks=10 ", "--audit.num_continuations=10 ", "--audit.chunk_len=50 ",
                  "--audit.alpha=1.0 ", "--objective.beta=0.1 ", "--audit.similarity='ned' ",
                  "--teacher.hint='none' ", "--audit.selection='entropy' "):
        assert shown in text, shown
    assert "ned | rouge1 | cosine | hybrid" in text and "entropy | random" in text
    # where the paper is silent, --help says the value is ours
    for key in ("--teacher.temperature=", "--audit.trim=", "--objective.normalizer=", "--audit.chunk_len=",
                "--objective.beta=", "--generation.max_new_tokens="):
        doc = text[text.index(key):].split("\n  --")[0]
        assert "ours" in doc, key
