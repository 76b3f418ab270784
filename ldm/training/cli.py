"""Command line of main.py: the original flags, Trainer flags (which replace PL 1.4's
``Trainer.add_argparse_args``) and ``key=value`` config overrides."""
from __future__ import annotations

import argparse
import inspect
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ldm.training.config import ConfigError


def str2bool(value) -> bool:
    """yes/true/t/y/1 and no/false/f/n/0, as the original accepts."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def int_or_str(value: str):
    """Trainer ``devices`` style values: an int when it is one, else the string ("auto", "0,1")."""
    try:
        return int(value)
    except ValueError:
        return value


# Trainer flags with their own help; any other Trainer argument is accepted as --name value.
TRAINER_FLAGS = {
    "accelerator": (str, "cpu, gpu, mps, tpu or auto (default: Lightning's auto)"),
    "devices": (int_or_str, "number of devices, a list like 0,1, or auto"),
    "strategy": (str, "ddp, ddp_spawn, fsdp, deepspeed, auto ..."),
    "precision": (str, "32-true, 16-mixed, bf16-mixed, ..."),
    "max_steps": (int, "stop after this many optimizer steps"),
    "max_epochs": (int, "stop after this many epochs"),
    "num_nodes": (int, "number of machines"),
    "accumulate_grad_batches": (int, "batches whose gradients make one step"),
    "gpus": (str, "legacy PL 1.x flag: '0,' or '0,1' select GPUs (accelerator gpu), '0' means CPU"),
}


def get_parser(parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser = parser_class(
        description="Train latent-diffusion models from YAML configs (original main.py command line). "
                    "Extra key=value arguments override config entries, e.g. model.params.x=1; other "
                    "Trainer arguments can be given as --name value.",
        allow_abbrev=False)
    parser.add_argument("-n", "--name", type=str, const="", default="", nargs="?",
                        help="postfix for the log directory name")
    parser.add_argument("-r", "--resume", type=str, const="", default="", nargs="?",
                        help="resume from a log directory or from a checkpoint inside one")
    parser.add_argument("-b", "--base", nargs="*", metavar="base_config.yaml", default=list(),
                        help="config files, merged left to right; later ones override earlier ones")
    parser.add_argument("-t", "--train", type=str2bool, const=True, default=False, nargs="?", help="train")
    parser.add_argument("--no-test", type=str2bool, const=True, default=False, nargs="?",
                        help="do not run the test split after training")
    parser.add_argument("-p", "--project", help="project name for loggers that take one (e.g. WandbLogger)")
    parser.add_argument("-d", "--debug", type=str2bool, nargs="?", const=True, default=False,
                        help="debug run: post-mortem debugger on errors, log directory moved to debug_runs/")
    parser.add_argument("-s", "--seed", type=int, default=23, help="seed for seed_everything")
    parser.add_argument("-f", "--postfix", type=str, default="", help="appended to the run name")
    parser.add_argument("-l", "--logdir", type=str, default="logs", help="root of the log directories")
    parser.add_argument("--scale_lr", type=str2bool, nargs="?", const=True, default=True,
                        help="learning rate = accumulate_grad_batches x devices x batch size x base_lr")
    trainer = parser.add_argument_group("Trainer")
    for name, (kind, text) in TRAINER_FLAGS.items():
        trainer.add_argument(f"--{name}", type=kind, default=None, help=text)
    return parser


def trainer_parameters() -> set:
    """Names of the installed Lightning Trainer's arguments."""
    from pytorch_lightning import Trainer

    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


def split_unknown(unknown: Sequence[str], trainer_params=trainer_parameters) -> Tuple[Dict[str, Any], List[str]]:
    """Separate ``--<Trainer argument> value`` pairs from ``key=value`` config overrides
    (``trainer_params`` gives the Trainer's argument names; called only when needed)."""
    trainer_args: Dict[str, Any] = {}
    dotlist: List[str] = []
    items = list(unknown)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            name, sep, value = item[2:].partition("=")
            if name not in trainer_params():
                raise ConfigError(f"unrecognized option --{name} (see --help)")
            if not sep:
                if i + 1 >= len(items) or items[i + 1].startswith("--"):
                    raise ConfigError(f"option --{name} needs a value")
                value = items[i + 1]
                i += 1
            trainer_args[name] = _parse_value(value)
        else:
            dotlist.append(item)
        i += 1
    return trainer_args, dotlist


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so that main.py reports all
    command-line mistakes the same way (one line, exit code 2)."""

    def error(self, message):
        raise _ArgumentError(message)


def parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, Dict[str, Any], List[str]]:
    """``(options, Trainer arguments given on the command line, config overrides)``."""
    parser = get_parser(_Parser)
    try:
        opt, unknown = parser.parse_known_args(argv)
    except _ArgumentError as err:
        raise ConfigError(str(err)) from None
    trainer_args = {name: getattr(opt, name) for name in TRAINER_FLAGS if getattr(opt, name) is not None}
    # "--base a.yaml model.params.x=1": argparse gives the override to --base; hand it back.
    overrides = [b for b in opt.base if "=" in b and not os.path.isfile(b)]
    opt.base = [b for b in opt.base if b not in overrides]
    extra, dotlist = split_unknown(overrides + list(unknown))
    trainer_args.update(extra)
    return opt, trainer_args, dotlist
