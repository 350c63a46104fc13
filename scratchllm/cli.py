"""The ``scratchllm`` command line: one entry point, one sub-command per pipeline step."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
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
    "distill",
    "quantize",
    "plot",
    "generate",
    "serve",
    "finetune",
    "classify",
    "chat",
    "convert",
    "export",
    "prune",
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


# errno -> what the user can do about it
_PATH_ERRORS = {
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "the disk is read-only: choose another folder",
    errno.ENOSPC: "free some space, or write to a larger disk",
    errno.EDQUOT: "free some space, or write to a larger disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EISDIR: "it is a folder: give a file's path",
    errno.EEXIST: "a file is there where a folder is expected: give another path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "give a shorter path",
}


def describe_os_error(err: OSError) -> str:
    """One line for a failed file operation: the path, the cause and what to do.

    >>> describe_os_error(PermissionError(13, "Permission denied", "/out/x.png"))
    'cannot write /out/x.png: Permission denied; choose a folder you can write to'
    """
    verb = "cannot read" if err.errno == errno.ENOENT else "cannot write"
    where = err.filename if err.filename is not None else "a file"
    cause = err.strerror or os.strerror(err.errno or 0)
    return f"{verb} {os.fsdecode(where)}: {cause}; {_PATH_ERRORS.get(err.errno, 'check the path')}"


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
    except OSError as err:  # a path that cannot be written or read: its name and the cause, not a traceback
        if err.errno not in _PATH_ERRORS:
            raise
        print(f"scratchllm: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scratchllm: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
