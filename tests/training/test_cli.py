"""main.py's command line: original flags, Trainer flags, overrides, one-line errors."""
import argparse

import pytest

from ldm.training.cli import parse_args, str2bool
from ldm.training.config import ConfigError


def test_original_flags_and_their_defaults():
    opt, trainer_args, dotlist = parse_args(["--base", "a.yaml", "b.yaml", "-t", "-n", "run"])
    assert opt.base == ["a.yaml", "b.yaml"] and opt.train is True and opt.name == "run"
    assert opt.seed == 23 and opt.logdir == "logs" and opt.scale_lr is True and opt.no_test is False
    assert opt.resume == "" and opt.postfix == "" and opt.debug is False
    assert trainer_args == {} and dotlist == []


@pytest.mark.parametrize("text, value", [("yes", True), ("T", True), ("1", True), ("no", False), ("f", False)])
def test_str2bool_accepts_the_original_spellings(text, value):
    assert str2bool(text) is value


def test_str2bool_flags_take_values_too():
    opt, _, _ = parse_args(["--scale_lr", "False", "--no-test", "-t", "false"])
    assert opt.scale_lr is False and opt.no_test is True and opt.train is False


def test_trainer_flags_with_help_and_any_other_trainer_argument():
    _, trainer_args, dotlist = parse_args(["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
                                           "--max_steps", "7", "--limit_val_batches", "0.5",
                                           "--log_every_n_steps=3", "model.params.x=1"])
    assert trainer_args == {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 7,
                            "limit_val_batches": 0.5, "log_every_n_steps": 3}
    assert dotlist == ["model.params.x=1"]


def test_overrides_right_after_base_are_not_taken_for_config_files():
    opt, _, dotlist = parse_args(["--base", "a.yaml", "model.params.x=1", "data.params.batch_size=2"])
    assert opt.base == ["a.yaml"] and dotlist == ["model.params.x=1", "data.params.batch_size=2"]


@pytest.mark.parametrize("argv, message", [
    (["--not_a_flag", "1"], "unrecognized option --not_a_flag"),
    (["--max_epochs"], "needs a value|expected one argument"),
    (["--seed", "abc"], "invalid int value"),
    (["--limit_val_batches"], "needs a value"),
    (["-t", "maybe"], "boolean value expected"),
])
def test_command_line_mistakes_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


def test_help_parser_is_a_plain_argparse_parser():
    from ldm.training.cli import get_parser

    assert isinstance(get_parser(), argparse.ArgumentParser)
