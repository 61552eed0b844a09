"""Shipped recipes by name: ``mvd-train --config NAME`` finds every file of configs/ wherever mvd
is installed (tests/test_packaging.py checks a wheel), a path to a file always wins, an unknown
name says what was looked for, and ``mvd-train --list-configs`` lists them with their task."""

import json
from pathlib import Path

import pytest
import yaml

from mvd import recipes
from mvd.config import ConfigError
from mvd.train import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_every_file_of_configs_is_a_recipe_found_by_its_name_with_or_without_yaml():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert recipes.names() == sorted(p.relative_to(CONFIGS).with_suffix("").as_posix() for p in files)
    for path in files:
        name = path.relative_to(CONFIGS).with_suffix("").as_posix()
        for asked in (name, f"{name}.yaml"):
            assert Path(recipes.resolve(asked)).read_text() == path.read_text(), asked


def test_a_path_to_a_file_wins_over_a_recipe_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tiny").mkdir()
    Path("tiny/pretrain_mvd.yaml").write_text("task: eval\n")
    assert recipes.resolve("tiny/pretrain_mvd.yaml") == "tiny/pretrain_mvd.yaml"
    assert Path(recipes.resolve("tiny/pretrain_mvd")).parent.name == "tiny"  # no file: the recipe
    assert recipes.resolve("tiny/pretrain_mvd") != "tiny/pretrain_mvd.yaml"


def test_an_unknown_name_names_what_was_asked_and_the_closest_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        recipes.resolve("pretrain_mvd_bsae_k400")
    msg = str(err.value)
    assert "config file pretrain_mvd_bsae_k400 does not exist, and no shipped recipe" in msg
    assert "did you mean pretrain_mvd_base_k400" in msg and "--list-configs" in msg
    # the README's repository paths, asked from another folder, point at the recipe's name
    with pytest.raises(ConfigError, match=r"the shipped recipe is --config tiny/finetune\)"):
        recipes.resolve("configs/tiny/finetune.yaml")
    Path("tiny").mkdir()  # a folder is neither a file nor a name, whatever it is called
    with pytest.raises(ConfigError, match="config tiny is not a file; --config takes a YAML file"):
        recipes.resolve("tiny")


def test_list_configs_prints_every_recipe_with_its_task(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--list-configs"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("shipped recipes (mvd-train --config NAME; files in ")
    listed = dict(line.split() for line in lines[1:])
    assert sorted(listed) == recipes.names()
    for name, task in listed.items():
        assert yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["task"] == task


def test_mvd_train_plans_a_recipe_given_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing named tiny/ here: the shipped recipe
    assert main(["--config", "tiny/pretrain_mvd", "--dry-run", "data.dir=shards",
                 "data.expected_samples=48"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["task"] == "pretrain_mvd" and plan["config"] == str(recipes.CONFIGS / "tiny" / "pretrain_mvd.yaml")


def test_mvd_train_refuses_an_unknown_recipe_with_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "pretrain_nothing", "--dry-run"]) == 2
    assert "config error: config file pretrain_nothing does not exist, and no shipped recipe" in capsys.readouterr().err


def test_an_unknown_option_is_refused_naming_every_option_there_is():
    with pytest.raises(SystemExit) as done:
        main(["--bogus"])
    message = str(done.value)
    assert "unknown option --bogus" in message
    assert all(option in message for option in ("--config", "--dry-run", "--list-configs"))
