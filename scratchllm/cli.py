"""The ``scratchllm`` command line: one entry point, one sub-command per pipeline step."""

from __future__ import annotations

import argparse
import importlib
import sys

from scratchllm import __version__
from scratchllm.errors import ScratchLLMError, did_you_mean

# Command modules in the order a learner meets them; each registers its own sub-parser.
COMMAND_MODULES: list[str] = [
    "demo",
    "tokenizer",
    "model",
    "prepare",
    "train",
    "eval",
    "plot",
    "generate",
    "convert",
    "tour",
    "attention",
]


class _Parser(argparse.ArgumentParser):
    """argparse that suggests the closest command when a name is mistyped."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if "invalid choice:" in message and self._subparsers is not None:
            choices = [c for action in self._subparsers._group_actions for c in (action.choices or {})]
            wrong = message.split("invalid choice: ")[1].split(" ")[0].strip("'")
            hint = did_you_mean(wrong, choices)
            if hint:
                message = f"unknown command '{wrong}'{hint}"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scratchllm", description="Build, train and run a GPT from scratch.")
    parser.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"scratchllm.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except ScratchLLMError as err:
        print(f"scratchllm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scratchllm: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
