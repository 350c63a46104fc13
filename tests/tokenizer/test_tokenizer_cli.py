"""`scratchllm tokenizer ...`: the commands work end to end and fail in one clear line."""

from __future__ import annotations

import pytest

from scratchllm.cli import main
from scratchllm.tokenizer import BPETokenizer


@pytest.fixture
def trained(tmp_path, verdict_path):
    out = tmp_path / "tok"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--input",
                str(verdict_path),
                "--vocab-size",
                "400",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_train_encode_decode_info(trained, verdict_path, capsys):
    tok = BPETokenizer.load(trained)
    assert tok.vocab_size == 400
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(trained), "--text", "The picture, I said."]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert ids == tok.encode("The picture, I said.")
    assert main(["tokenizer", "decode", "--tokenizer", str(trained), *map(str, ids)]) == 0
    assert capsys.readouterr().out == "The picture, I said.\n"
    assert (
        main(["tokenizer", "info", "--tokenizer", str(trained), "--input", str(verdict_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "vocab size: 400" in out and "bytes per token" in out and "longest tokens" in out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("scratchllm: error: ")
    return err[-1]


def test_errors_exit_2_with_one_line(trained, tmp_path, verdict_path, capsys):
    verdict = str(verdict_path)
    cases = [
        (["tokenizer", "train", "--input", verdict, "--vocab-size", "100", "--out", str(tmp_path / "a")], "too small"),
        (
            [
                "tokenizer",
                "train",
                "--input",
                str(tmp_path / "nope.txt"),
                "--vocab-size",
                "300",
                "--out",
                str(tmp_path / "b"),
            ],
            "cannot read",
        ),
        (["tokenizer", "train", "--input", verdict, "--vocab-size", "300", "--out", str(trained)], "--force"),
        (
            [
                "tokenizer",
                "train",
                "--input",
                verdict,
                "--vocab-size",
                "300",
                "--out",
                str(tmp_path / "c"),
                "--special",
                "<|a|>",
                "<|a|>",
            ],
            "duplicate",
        ),
        (["tokenizer", "encode", "--tokenizer", str(trained), "--text", "x<|endoftext|>"], "--allow-special"),
        (["tokenizer", "decode", "--tokenizer", str(trained), "5", "99999"], "not in this tokenizer"),
        (["tokenizer", "info", "--tokenizer", str(tmp_path / "missing")], "cannot read tokenizer"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert message in one_line_error(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_force_replaces(trained, verdict_path):
    argv = [
        "tokenizer",
        "train",
        "--input",
        str(verdict_path),
        "--vocab-size",
        "300",
        "--out",
        str(trained),
        "--force",
    ]
    assert main(argv) == 0
    assert BPETokenizer.load(trained).vocab_size == 300


def test_encode_allow_special(trained, capsys):
    tok = BPETokenizer.load(trained)
    capsys.readouterr()
    assert (
        main(["tokenizer", "encode", "--tokenizer", str(trained), "--text", "x<|endoftext|>", "--allow-special"]) == 0
    )
    assert [int(i) for i in capsys.readouterr().out.split()][-1] == tok.special_tokens["<|endoftext|>"]


def test_encode_special_as_text(trained, capsys):
    tok = BPETokenizer.load(trained)
    capsys.readouterr()
    argv = ["tokenizer", "encode", "--tokenizer", str(trained), "--text", "x<|endoftext|>", "--special-as-text"]
    assert main(argv) == 0
    assert [int(i) for i in capsys.readouterr().out.split()] == tok.encode("x<|endoftext|>", disallowed_special=())
