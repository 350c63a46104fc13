"""A new user's and an adversary's mistakes, command by command (issue 17).

Each case runs the CLI with a bad input and asserts: a non-zero exit, exactly one error line
that says what to do, no traceback, and nothing the user had changed, added or deleted (the
whole folder of their files is hashed before and after). Most cases run in this process for
speed; those that need a second process (a lock held by another one, bytes on stdin) run in one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scratchllm.cli import main
from scratchllm.data.shards import prepare
from scratchllm.fileio import exclusive_lock
from scratchllm.tokenizer import BPETokenizer
from scratchllm.train import load_run_config, train

REPO = Path(__file__).resolve().parents[1]

# a model and schedule small enough for ~2 ms steps on one core (tests/train/train_helpers.py's TINY)
TINY = ["model.n_layers=2", "model.n_heads=2", "model.d_model=32", "model.context_length=16", "model.dropout=0.0",
        "train.batch_size=4", "train.warmup_steps=5", "train.eval_batches=4", "train.lr=3e-3",
        "train.precision=fp32", "train.peak_flops=1e11", "train.plot=false", "train.sample_tokens=0"]
UNWRITABLE = "/sys/scratchllm-misuse"  # no one, root included, can create anything under /sys


@pytest.fixture(scope="module")
def world(tmp_path_factory, verdict_path) -> Path:
    """What a user has: a corpus, prepared data, a trained run (3 steps), a converted HF folder,
    a folder of their own notes and a plain file."""
    root = tmp_path_factory.mktemp("world")
    shutil.copy(verdict_path, root / "the-verdict.txt")
    prepare(root / "the-verdict.txt", root / "data", vocab_size=257, workers=1)
    config = load_run_config(overrides=[*TINY, f"data.dir={root / 'data'}", "train.max_steps=3"],
                             base={"model": {"vocab_size": 258}})
    train(config, root / "run", progress=False)
    assert main(["convert", "--to-hf", str(root / "run"), "--out", str(root / "hf")]) == 0
    # a checkpoint whose tokenizer was replaced by another of the same size
    shutil.copytree(root / "run" / "checkpoints" / "step-00000003", root / "swapped")
    tokenizer = BPETokenizer.load(root / "swapped" / "tokenizer")
    other = BPETokenizer(tokenizer.merges, pattern="gpt2", special_tokens=tokenizer.special_tokens)
    assert other.vocab_size == tokenizer.vocab_size and other.fingerprint() != tokenizer.fingerprint()
    shutil.rmtree(root / "swapped" / "tokenizer")
    other.save(root / "swapped" / "tokenizer")
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("my own notes\n")
    (root / "file.txt").write_text("a file\n")
    (root / "records.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')  # cut short
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content's sha256 (folders as 'dir')."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def tiny_set(*extra: str) -> list[str]:
    return [arg for item in (*TINY, *extra) for arg in ("--set", item)]


def train_args(*extra: str) -> list[str]:
    return ["train", "--data", "{w}/data", "--out", "{w}/new-run", "--quiet", *tiny_set(*extra)]


# (id, argv with {w} for the user's folder, words the one error line must contain)
IN_PROCESS = [
    # -- data loss: convert replaces only what it wrote
    ("convert-to-hf-over-notes", ["convert", "--to-hf", "{w}/run", "--out", "{w}/notes"],
     "not a folder written by scratchllm convert"),
    ("convert-to-hf-over-its-source", ["convert", "--to-hf", "{w}/run", "--out", "{w}/run"],
     "would replace the source"),
    ("convert-to-hf-over-a-folder-holding-the-source",
     ["convert", "--to-hf", "{w}/run/checkpoints/step-00000003", "--out", "{w}/run"], "would replace the source"),
    ("convert-from-hf-over-a-run", ["convert", "--from-hf", "{w}/hf", "--out", "{w}/run"],
     "not a folder written by scratchllm convert"),
    ("convert-from-hf-over-a-run-even-forced", ["convert", "--from-hf", "{w}/hf", "--out", "{w}/run", "--force"],
     "not a folder written by scratchllm convert"),
    ("convert-over-its-own-output-unforced", ["convert", "--to-hf", "{w}/run", "--out", "{w}/hf"], "pass --force"),
    ("convert-out-is-a-file", ["convert", "--to-hf", "{w}/run", "--out", "{w}/file.txt"], "is a file, not a folder"),
    # -- data loss: prepare replaces only what it wrote
    ("prepare-over-notes", ["prepare", "--corpus", "{w}/the-verdict.txt", "--out", "{w}/notes", "--vocab-size", "257"],
     "not a prepared data folder"),
    ("prepare-out-is-a-file", ["prepare", "--corpus", "{w}/the-verdict.txt", "--out", "{w}/file.txt"],
     "is a file, not a folder"),
    ("prepare-zero-workers", ["prepare", "--corpus", "{w}/the-verdict.txt", "--out", "{w}/d2", "--workers", "0"],
     "workers must be >= 1"),
    # -- data loss: every setting checked when the config is read, before any step
    ("train-negative-eval-batches", train_args("train.eval_batches=-1"), "train.eval_batches must be >= 0"),
    ("train-negative-grad-clip", train_args("train.grad_clip=-1"), "train.grad_clip must be >= 0 (0 = off)"),
    ("train-beta1-one", train_args("train.beta1=1"), "train.beta1 must be in [0, 1)"),
    ("train-nan-lr", train_args("train.lr=nan"), "train.lr must be > 0"),
    ("train-negative-weight-decay", train_args("train.weight_decay=-0.1"), "train.weight_decay must be >= 0"),
    ("train-negative-max-seconds", train_args("train.max_seconds=-1"), "train.max_seconds must be >= 0"),
    ("train-negative-sample-tokens", train_args("train.sample_tokens=-5"), "train.sample_tokens must be >= 0"),
    ("train-zero-batch-size", train_args("train.batch_size=0"), "train.batch_size must be >= 1"),
    ("train-zero-norm-eps", train_args("model.norm_eps=0"), "norm_eps must be > 0"),
    ("train-rope-base-one", train_args("model.rope_base=1", "model.pos_encoding=rope"), "rope_base must be > 1"),
    ("train-resume-below-the-step-reached", ["train", "--resume", "{w}/run", "--set", "train.max_steps=2"],
     "has reached step 3"),
    ("train-resume-bad-setting", ["train", "--resume", "{w}/run", "--set", "train.eval_batches=-1"],
     "train.eval_batches must be >= 0"),
    ("demo-over-notes", ["demo", "--out", "{w}/notes", "--corpus", "{w}/the-verdict.txt", "--preset", "demo-tiny"],
     "not a run folder"),
    ("demo-over-a-trained-run", ["demo", "--out", "{w}/run", "--corpus", "{w}/the-verdict.txt"],
     "already holds a trained run"),
    ("demo-nan-minutes", ["demo", "--out", "{w}/d", "--minutes", "nan"], "--minutes must be > 0"),
    ("distill-nan-temperature", ["distill", "--teacher", "{w}/run", "--data", "{w}/data", "--out", "{w}/student",
                                 "--temperature", "nan", *tiny_set()], "--temperature must be > 0"),
    ("distill-alpha-above-one", ["distill", "--teacher", "{w}/run", "--data", "{w}/data", "--out", "{w}/student",
                                 "--alpha", "2", *tiny_set()], "--alpha must be in [0, 1]"),
    ("eval-zero-batch-size", ["eval", "--checkpoint", "{w}/run", "--corpus", "{w}/the-verdict.txt", "--batch-size",
                              "0"], "--batch-size must be at least 1"),
    # -- the second wave's commands: output folders, ranges, records
    ("quantize-group-not-dividing", ["quantize", "--checkpoint", "{w}/run", "--bits", "4", "--group-size", "64",
                                     "--out", "{w}/q"], "--group-size 64 does not divide the 32 inputs of trf_blocks"),
    ("quantize-over-its-source", ["quantize", "--checkpoint", "{w}/run", "--bits", "8", "--out", "{w}/run"],
     "would replace the checkpoint being quantized"),
    ("quantize-over-notes", ["quantize", "--checkpoint", "{w}/run", "--bits", "8", "--out", "{w}/notes"],
     "is not a checkpoint (no config.json), so it is kept"),
    ("prune-sparsity-one", ["prune", "--checkpoint", "{w}/run", "--method", "magnitude", "--sparsity", "1.0",
                            "--data", "{w}/data", "--out", "{w}/p"], "--sparsity must be in [0, 1)"),
    ("prune-wanda-without-data", ["prune", "--checkpoint", "{w}/run", "--method", "wanda", "--sparsity", "0.5",
                                  "--out", "{w}/p"], "wanda pruning needs text: give --data"),
    ("export-gguf-out-is-a-folder", ["export", "--checkpoint", "{w}/run", "--format", "gguf", "--type", "f32",
                                     "--out", "{w}/notes"], "is a folder: give the path of a .gguf file"),
    ("serve-not-a-checkpoint", ["serve", "--checkpoint", "{w}/notes"], "holds no checkpoint"),
    ("chat-not-a-checkpoint", ["chat", "--checkpoint", "{w}/notes"], "holds no checkpoint"),
    ("classify-with-a-language-model", ["classify", "--checkpoint", "{w}/run", "--text", "hi"],
     "is not a classifier (its checkpoint records no labels)"),
    ("finetune-instruct-bad-record", ["finetune", "instruct", "--checkpoint", "{w}/run", "--data", "{w}/records.jsonl",
                                      "--out", "{w}/sft"], "records.jsonl:2: not a JSON record"),
    ("finetune-dpo-bad-record", ["finetune", "dpo", "--checkpoint", "{w}/run", "--data", "{w}/records.jsonl",
                                 "--out", "{w}/dpo"], "records.jsonl:2: not a JSON record"),
    ("finetune-classify-bad-record", ["finetune", "classify", "--checkpoint", "{w}/run", "--data",
                                      "{w}/records.jsonl", "--out", "{w}/cls"], "records.jsonl:2: not a JSON record"),
    # -- silent wrong results
    ("generate-with-a-swapped-tokenizer", ["generate", "--checkpoint", "{w}/swapped", "--prompt", "Hi"],
     "is not the tokenizer these weights were trained with"),
    ("generate-special-token-in-prompt", ["generate", "--checkpoint", "{w}/run", "--prompt", "a<|endoftext|>b"],
     "--prompt contains the special token '<|endoftext|>'; pass --allow-special"),
    ("tour-special-token-in-text", ["tour", "--checkpoint", "{w}/run", "--text", "a<|endoftext|>", "--out", "{w}/t"],
     "--text contains the special token '<|endoftext|>'; pass --allow-special"),
    ("attention-special-token-in-text", ["attention", "--checkpoint", "{w}/run", "--text", "a<|endoftext|>",
                                         "--out", "{w}/a"], "--text contains the special token '<|endoftext|>'"),
    ("tokenizer-encode-special-token", ["tokenizer", "encode", "--tokenizer", "{w}/data/tokenizer", "--text",
                                        "a<|endoftext|>"], "the text contains the special token '<|endoftext|>'"),
    # -- file where a folder is expected, and the reverse; unwritable destinations
    ("train-out-is-a-file", ["train", "--data", "{w}/data", "--out", "{w}/file.txt", "--quiet", *tiny_set()],
     "is a file, not a folder"),
    ("train-out-unwritable", ["train", "--data", "{w}/data", "--out", f"{UNWRITABLE}/run", "--quiet", *tiny_set()],
     f"cannot lock {UNWRITABLE}/run"),
    ("plot-out-is-a-folder", ["plot", "{w}/run", "--out", "{w}/notes"], "notes is a folder, not a file"),
    ("plot-out-unwritable", ["plot", "{w}/run", "--out", f"{UNWRITABLE}/loss.png"], f"cannot write {UNWRITABLE}"),
    ("tour-out-is-a-file", ["tour", "--checkpoint", "{w}/run", "--text", "Hi", "--out", "{w}/file.txt"],
     "file.txt: File exists; a file is there where a folder is expected"),
    ("tour-out-unwritable", ["tour", "--checkpoint", "{w}/run", "--text", "Hi", "--out", f"{UNWRITABLE}/tour"],
     f"cannot write {UNWRITABLE}"),
    ("attention-out-is-a-file", ["attention", "--checkpoint", "{w}/run", "--text", "Hi there", "--out",
                                 "{w}/file.txt"], "file.txt"),
    ("attention-out-unwritable", ["attention", "--checkpoint", "{w}/run", "--text", "Hi there", "--out",
                                  f"{UNWRITABLE}/att"], f"cannot write {UNWRITABLE}"),
    ("tokenizer-train-out-is-a-file", ["tokenizer", "train", "--input", "{w}/the-verdict.txt", "--vocab-size", "300",
                                       "--out", "{w}/file.txt"], "file.txt"),
    ("tokenizer-train-out-unwritable", ["tokenizer", "train", "--input", "{w}/the-verdict.txt", "--vocab-size",
                                        "300", "--out", f"{UNWRITABLE}/tok"], f"cannot write {UNWRITABLE}"),
    ("convert-out-unwritable", ["convert", "--to-hf", "{w}/run", "--out", f"{UNWRITABLE}/hf"],
     f"cannot write {UNWRITABLE}"),
    ("prepare-out-unwritable", ["prepare", "--corpus", "{w}/the-verdict.txt", "--out", f"{UNWRITABLE}/data",
                                "--vocab-size", "257"], f"cannot lock {UNWRITABLE}/data"),
    # -- text that is not UTF-8 (Python hands undecodable argument bytes over as lone surrogates)
    ("generate-prompt-not-utf8", ["generate", "--checkpoint", "{w}/run", "--prompt", "caf\udce9"],
     "--prompt is not valid UTF-8"),
    ("tour-text-not-utf8", ["tour", "--checkpoint", "{w}/run", "--text", "caf\udce9", "--out", "{w}/t"],
     "--text is not valid UTF-8"),
    ("attention-text-not-utf8", ["attention", "--checkpoint", "{w}/run", "--text", "caf\udce9", "--out", "{w}/a"],
     "--text is not valid UTF-8"),
    ("tokenizer-encode-text-not-utf8", ["tokenizer", "encode", "--tokenizer", "{w}/data/tokenizer", "--text",
                                        "caf\udce9"], "--text is not valid UTF-8"),
    # -- numbers out of range or not finite
    ("generate-negative-temperature", ["generate", "--checkpoint", "{w}/run", "--prompt", "Hi", "--temperature", "-1"],
     "temperature must be >= 0"),
    ("generate-nan-temperature", ["generate", "--checkpoint", "{w}/run", "--prompt", "Hi", "--temperature", "nan"],
     "temperature must be >= 0"),
    ("generate-zero-top-p", ["generate", "--checkpoint", "{w}/run", "--prompt", "Hi", "--top-p", "0"],
     "top_p must be in (0, 1]"),
    ("generate-top-p-above-one", ["generate", "--checkpoint", "{w}/run", "--prompt", "Hi", "--top-p", "1.5"],
     "top_p must be in (0, 1]"),
    ("generate-zero-top-k", ["generate", "--checkpoint", "{w}/run", "--prompt", "Hi", "--top-k", "0"],
     "top_k must be >= 1"),
    ("tokenizer-info-zero-top", ["tokenizer", "info", "--tokenizer", "{w}/data/tokenizer", "--top", "0"],
     "--top must be >= 1"),
    ("model-info-negative-batch-size", ["model", "info", "--preset", "tiny", "--batch-size", "-1"],
     "--batch-size must be >= 1"),
]


def _one_error_line(stderr: str, words: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    assert words in errors[0], stderr


@pytest.mark.parametrize("argv, words", [case[1:] for case in IN_PROCESS], ids=[case[0] for case in IN_PROCESS])
def test_misuse_is_one_line_and_changes_nothing(world, capsys, argv, words):
    before = snapshot(world)
    code = main([arg.replace("{w}", str(world)) for arg in argv])
    assert code != 0
    _one_error_line(capsys.readouterr().err, words)
    assert snapshot(world) == before


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "scratchllm", *args], input=stdin, capture_output=True, env=env,
                          timeout=300)


@contextlib.contextmanager
def _held(folder: Path, lock_file: Path | None = None):
    with exclusive_lock(folder, lock_file):
        yield


SUBPROCESS = [
    # a second writer of the same run folder or data folder
    ("train-run-in-use", lambda w: _held(w / "run"), ["train", "--resume", "{w}/run", "--set", "train.max_steps=5"],
     None, "is in use by pid {pid}"),
    # distill writes its settings into the run folder before training: under the same lock
    ("distill-run-in-use", lambda w: _held(w / "student"),
     ["distill", "--teacher", "{w}/run", "--data", "{w}/data", "--out", "{w}/student", "--quiet",
      *tiny_set("train.max_steps=2")], None, "is in use by pid {pid}"),
    ("prepare-data-in-use", lambda w: _held(w / "data", w / ".data.lock"),
     ["prepare", "--corpus", "{w}/the-verdict.txt", "--out", "{w}/data", "--vocab-size", "257"], None,
     "is in use by pid {pid}"),
    # bytes that are not UTF-8 on standard input
    ("tokenizer-encode-stdin-not-utf8", contextlib.nullcontext,
     ["tokenizer", "encode", "--tokenizer", "{w}/data/tokenizer"], b"caf\xe9\n", "standard input is not valid UTF-8"),
]


@pytest.mark.parametrize("hold, argv, stdin, words", [case[1:] for case in SUBPROCESS],
                         ids=[case[0] for case in SUBPROCESS])
def test_misuse_in_another_process(world, hold, argv, stdin, words):
    before = snapshot(world)
    with hold(world):
        after_lock = snapshot(world)
        result = _cli(*[arg.replace("{w}", str(world)) for arg in argv], stdin=stdin)
        assert snapshot(world) == after_lock
    assert result.returncode != 0
    _one_error_line(result.stderr.decode("utf-8", "replace"), words.format(pid=os.getpid()))
    assert snapshot(world) == before


# -- faults: what was saved survives them


def test_resume_skips_a_damaged_newest_checkpoint_and_rotation_keeps_the_intact_one(world, tmp_path, capsys):
    from scratchllm.checkpoint import STATE_FILE, checkpoint_path, checkpoint_problem, list_checkpoints

    run = tmp_path / "run"
    argv = ["train", "--data", str(world / "data"), "--out", str(run), "--quiet",
            *tiny_set("train.max_steps=4", "train.checkpoint_interval=2", "train.keep_last=2")]
    assert main(argv) == 0
    damaged = checkpoint_path(run, 4) / STATE_FILE
    damaged.write_text('{"step": 4, "tok')  # cut short, as by a full disk
    assert main(["train", "--resume", str(run), "--quiet", "--set", "train.max_steps=6"]) == 0
    assert f"skipping a damaged checkpoint: {damaged}" in capsys.readouterr().err
    # resumed from step 2; step 4 was saved again over the damaged one, and step 2 rotated away only then
    assert [p.name for p in list_checkpoints(run)] == ["step-00000004", "step-00000006"]
    assert all(checkpoint_problem(p) is None for p in list_checkpoints(run))


def test_a_failing_final_evaluation_still_leaves_the_last_checkpoint(world, tmp_path, monkeypatch):
    from scratchllm.checkpoint import list_checkpoints
    from scratchllm.train import run as run_module

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(run_module, "score_windows", broken)
    config = load_run_config(overrides=[*TINY, f"data.dir={world / 'data'}", "train.max_steps=3",
                                        "train.eval_interval=0"], base={"model": {"vocab_size": 258}})
    with pytest.raises(ZeroDivisionError):
        train(config, tmp_path / "run", progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000003"]


@pytest.mark.parametrize("flag, expected", [("--allow-special", [97, 256]), ("--special-as-text", None)])
def test_special_token_flags_are_the_same_everywhere(world, tmp_path, capsys, flag, expected):
    text = "a<|endoftext|>"
    assert main(["tokenizer", "encode", "--tokenizer", str(world / "data" / "tokenizer"), "--text", text, flag]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert ids == expected if expected else len(ids) == len(text.encode())  # byte level: one id per byte
    assert main(["attention", "--checkpoint", str(world / "run"), "--text", text, "--out", str(tmp_path / "a"),
                 flag]) == 0
    assert main(["generate", "--checkpoint", str(world / "run"), "--prompt", text, "--max-new-tokens", "2",
                 "--temperature", "0", flag]) == 0


def test_convert_round_trip_keeps_the_tokenizer(world, tmp_path):
    from scratchllm.checkpoint import load_checkpoint

    assert main(["convert", "--from-hf", str(world / "hf"), "--out", str(tmp_path / "back")]) == 0
    assert load_checkpoint(tmp_path / "back")[1] == load_checkpoint(world / "run")[1]


def test_a_resumed_run_finds_its_data_from_another_folder(world, tmp_path, monkeypatch):
    shutil.copytree(world / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "data", "--out", "run", "--quiet", *tiny_set("train.max_steps=2")]) == 0
    monkeypatch.chdir(world)
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet", "--set", "train.max_steps=3"]) == 0


@pytest.mark.parametrize("argv", [
    ["tokenizer", "train", "--input", "{w}/the-verdict.txt", "--vocab-size", "300", "--out", "{w}/new/tok"],
    ["plot", "{w}/run", "--out", "{w}/new/loss.png"],
    ["convert", "--to-hf", "{w}/run", "--out", "{w}/new/hf"],
], ids=["tokenizer-train", "plot", "convert"])
def test_a_full_disk_is_one_line_and_leaves_no_temporary_or_empty_folder(world, capsys, monkeypatch, argv):
    import errno

    from scratchllm import fileio

    def full(tmp, path):  # as if the disk filled while the temporary was written: it never lands
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(fileio.os, "replace", full)
    before = snapshot(world)
    assert main([arg.replace("{w}", str(world)) for arg in argv]) != 0
    _one_error_line(capsys.readouterr().err, "No space left on device; free some space")
    assert snapshot(world) == before  # no temporary file, no empty folder new/
