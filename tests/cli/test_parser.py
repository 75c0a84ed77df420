"""The command line's parsers: help on every flag, train's flags generated from the config dataclasses."""

import argparse
import dataclasses

from whisper_lora.cli import build_parser
from whisper_lora.training.config import TrainConfig
from whisper_lora.training.lora import LoraSpec


def _parsers(p: argparse.ArgumentParser, path=("whisper-lora",)):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_flag_of_every_command_has_help():
    missing = [
        f"{' '.join(path)} {'/'.join(a.option_strings) or a.dest}"
        for path, p in _parsers(build_parser())
        for a in p._actions
        if not isinstance(a, argparse._SubParsersAction) and a.help in (None, "") and a.dest != "help"
    ]
    assert missing == []


def test_train_has_one_flag_per_config_field_and_global_quiet_anywhere():
    train = dict(_parsers(build_parser()))[("whisper-lora", "train")]
    flags = {s for a in train._actions for s in a.option_strings}
    want = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig) if f.name != "lora"}
    want |= {f"--lora-{f.name.replace('_', '-')}" for f in dataclasses.fields(LoraSpec)}
    assert want - flags == set()
    for argv in (["-q", "train", "--language", "sw"], ["train", "--language", "sw", "-q"]):
        assert build_parser().parse_args(argv).quiet
