"""Mutation testing: plant one-line bugs in the core, one at a time, and see whether the tests notice.

For each target file the script finds every spot where a small, plausible slip could happen (from
the file's syntax tree) and makes one mutant per spot:

- comparisons: ``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``, ``in`` <-> ``not in``, ``is`` <-> ``is not``
- arithmetic: ``+`` <-> ``-``, ``*`` <-> ``/``, ``//`` -> ``*``, ``**`` -> ``*``, ``%`` -> ``//``,
  ``&`` <-> ``|``, and the same in ``+=``, ``-=``, ``*=``, ``/=``
- ``and`` <-> ``or``, a dropped ``not``, a dropped unary minus, ``min`` <-> ``max``
- a dropped call statement (``set_lr(optimizer, lr)`` -> ``pass``), except those that only show
  progress (``print``, ``tqdm``, the progress bar)
- constants: ``0`` -> ``1``, ``1`` -> ``2``, ``2`` -> ``1``, other integers ``n`` -> ``n + 1``, a float
  ``x`` -> ``2 x`` (``0.0`` -> ``1.0``), ``True`` <-> ``False``

Docstrings, messages (strings and f-strings) and type annotations are left alone, and so are floats
below 1e-4 in size (epsilons: doubling one is a change no test of a float result can see).

Each mutant is written into a private copy of the repository (one per worker; the real tree is
never touched) and that file's fast test subset (``TESTS``, with the file's own doctests) runs
with ``-x`` and a per-mutant timeout. A failing, erroring or timed-out run kills the mutant; a run
that passes means it survived, and the survivors are printed with their line and the change.

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/mutate.py                # every target
    .venv/bin/python benchmarks/mutate.py --files model/positions.py --max-per-file 0   # all mutants of one file
    .venv/bin/python benchmarks/mutate.py --list                                       # the mutants, not run

Not part of ``make test``: the whole pass takes minutes (docs/testing.md has the figures).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "scratchllm"

# Each target file (under scratchllm/) and the tests that should catch a bug in it: the fast ones
# that exercise it directly (tiny models, no subprocesses). The file's doctests run too.
TRAINER = "tests/train/test_trainer.py::"
LOOP = "tests/train/test_loop.py::"
BPE = "tests/tokenizer/test_bpe.py::"
TESTS: dict[str, list[str]] = {
    "train/loop.py": [
        f"{TRAINER}test_a_custom_loss_on_a_frozen_subset_takes_exactly_the_optimizer_step_of_its_mean",
        f"{TRAINER}test_nothing_trainable_is_refused",
        f"{TRAINER}test_a_default_evaluator_scores_the_custom_loss_on_validation_batches",
        f"{LOOP}test_accumulating_n_micro_batches_equals_one_batch_n_times_larger",
        f"{LOOP}test_every_step_runs_at_the_warmup_cosine_learning_rate",
        f"{LOOP}test_one_step_of_accumulation_has_the_gradient_of_the_batch_mean",
        "tests/train/test_distributed.py::test_two_ranks_accumulating_take_the_gradient_of_the_mean_over_all_their_tokens",
    ],
    "train/optim.py": [
        "tests/train/test_optim.py",
        f"{LOOP}test_every_step_runs_at_the_warmup_cosine_learning_rate",
    ],
    "model/attention.py": [
        "tests/model/test_attention.py",
        "tests/model/test_gqa.py",
        "tests/model/test_prefill.py",
        "tests/model/test_positions.py::test_attention_rotates_queries_and_keys_as_transformers_does",
        "tests/model/test_gpt_model.py",
        "tests/test_generate.py",
    ],
    "model/positions.py": [
        "tests/model/test_positions.py",
        "tests/model/test_prefill.py",
        "tests/model/test_gpt_model.py",
        "tests/test_generate.py",
    ],
    "model/gpt.py": [
        "tests/model/test_gpt_model.py",
        "tests/model/test_model_config.py",
        "tests/model/test_prefill.py",
        "tests/model/test_positions.py",
        "tests/model/test_book_oracle.py",
        "tests/test_generate.py",
    ],
    "tokenizer/bpe.py": [  # all of test_bpe.py but the two that read the 5 MB Shakespeare corpus
        f"{BPE}{name}" for name in (
            "test_fast_training_equals_naive_recount", "test_fast_training_equals_naive_on_repetitive_words",
            "test_training_is_deterministic_and_lays_out_ids", "test_round_trip_any_text",
            "test_decode_of_split_utf8_matches_tiktoken", "test_special_token_policy", "test_bad_special_tokens",
            "test_bad_training_inputs", "test_running_out_of_pairs_stops_with_a_warning",
            "test_explain_word_replays_encoding", "test_decode_rejects_unknown_ids",
            "test_ids_in_the_surrogate_range_survive_the_id_strings", "test_find_special",
            "test_pair_table_lookup_equals_a_dict", "test_batch_encoding_takes_empty_chunks_anywhere")
    ],
    "generate.py": [
        "tests/test_generate.py",
        "tests/model/test_prefill.py",
    ],
}

COMPARE_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
              ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
AUG_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}


@dataclass(frozen=True)
class Mutant:
    """One planted bug: bytes [start, end) of ``file`` replaced by ``replacement``."""

    file: str  # relative to scratchllm/
    line: int
    start: int
    end: int
    original: str
    replacement: str
    kind: str

    def apply(self, source: bytes) -> bytes:
        return source[: self.start] + self.replacement.encode() + source[self.end :]

    def diff(self, source: bytes) -> tuple[str, str]:
        """The original line(s) and the mutated one(s)."""
        before_start = source.rfind(b"\n", 0, self.start) + 1
        after_end = source.find(b"\n", self.end)
        after_end = len(source) if after_end < 0 else after_end
        before = source[before_start:after_end].decode()
        after = (source[before_start : self.start] + self.replacement.encode() + source[self.end : after_end]).decode()
        return before, after


def _mutated(node: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    """Copies of ``node`` with one slip each, and the slip's name."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAP:
                new = _copy(node)
                new.ops[i] = COMPARE_SWAP[type(op)]()
                yield new, "comparison"
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAP:
        new = _copy(node)
        new.op = BINOP_SWAP[type(node.op)]()
        yield new, "arithmetic"
    elif isinstance(node, ast.AugAssign) and type(node.op) in AUG_SWAP:
        new = _copy(node)
        new.op = AUG_SWAP[type(node.op)]()
        yield new, "arithmetic"
    elif isinstance(node, ast.BoolOp):
        new = _copy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield new, "boolean"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        yield node.operand, "dropped not" if isinstance(node.op, ast.Not) else "dropped minus"
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
        new = _copy(node)
        new.func.id = "max" if node.func.id == "min" else "min"
        yield new, "min/max"
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and not _is_display(node.value):
        yield ast.Pass(), "dropped call"
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        value = node.value
        if isinstance(value, bool):
            yield ast.Constant(not value), "constant"
        elif isinstance(value, int):
            yield ast.Constant({0: 1, 1: 2, 2: 1}.get(value, value + 1)), "constant"
        elif value == 0.0:
            yield ast.Constant(1.0), "constant"
        elif abs(value) >= 1e-4:
            yield ast.Constant(value * 2), "constant"


def _is_display(call: ast.Call) -> bool:
    """A call that only shows progress (print, tqdm, the progress bar): dropping it changes no result."""
    name = ast.unparse(call.func)
    return name == "print" or name.startswith(("tqdm.", "bar."))


def _copy(node: ast.AST) -> ast.AST:
    return ast.parse(ast.unparse(node), mode="eval").body if isinstance(node, ast.expr) else \
        ast.parse(ast.unparse(node)).body[0]


def _skipped(tree: ast.Module) -> set[int]:
    """ids of the nodes no mutant touches: annotations, f-strings, docstrings, ``__future__``."""
    skip: set[int] = set()

    def drop(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign):
            drop(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            drop(node.returns)
        if isinstance(node, ast.JoinedStr | ast.ImportFrom):
            drop(node)
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            drop(body[0])
    return skip


def find_mutants(relpath: str, source: bytes) -> list[Mutant]:
    """Every mutant of the file ``scratchllm/<relpath>`` with the text ``source``."""
    tree = ast.parse(source)
    skip = _skipped(tree)
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or not hasattr(node, "end_col_offset"):
            continue
        start = line_starts[node.lineno - 1] + node.col_offset  # ast offsets count UTF-8 bytes
        end = line_starts[node.end_lineno - 1] + node.end_col_offset
        original = source[start:end].decode()
        for new, kind in _mutated(node):
            text = ast.unparse(new)
            # a parenthesised expression means the same wherever it stands; statements stay bare
            if isinstance(new, ast.expr) and not isinstance(new, ast.Constant | ast.Name):
                text = f"({text})"
            if isinstance(new, ast.Constant) and isinstance(new.value, int | float) and new.value < 0:
                text = f"({text})"
            if text != original:
                found.append(Mutant(relpath, node.lineno, start, end, original, text, kind))
    return sorted(found, key=lambda m: (m.start, m.end, m.replacement))


@dataclass
class Result:
    mutant: Mutant
    outcome: str  # killed, timeout, survived
    seconds: float


def _present(copy: Path, test: str) -> bool:
    """Whether a test file (or ``file::function``) exists in ``copy``: an older tree may lack the newer
    tests, and the pass then runs the ones it has (how the "before" figures were taken)."""
    path, _, name = test.partition("::")
    return (copy / path).is_file() and (not name or f"def {name}(" in (copy / path).read_text())


# A worker: imports torch and pytest once, then forks a child per test run, so a mutant costs its
# tests and not an interpreter start (seconds on a loaded 2-core machine). The parent never imports
# scratchllm, so every child imports the copy's files as they are at that moment.
SERVER = r"""
import json, os, signal, sys, time
sys.dont_write_bytecode = True  # a mutant the same size as the original must not meet a stale .pyc
import numpy, pytest, torch  # noqa: F401
for name in ("tqdm", "safetensors.torch", "transformers.models.llama.modeling_llama", "tiktoken"):
    try:
        __import__(name)
    except ImportError:
        pass
os.chdir(sys.argv[1])
for line in sys.stdin:
    args, timeout = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)  # its own process group: a timeout kills what its tests started too
        out = os.open(os.devnull, os.O_WRONLY)
        os.dup2(out, 1), os.dup2(out, 2)
        try:
            code = int(pytest.main(args))
        except BaseException:
            code = 3
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            code = None
            break
        time.sleep(0.01)
    print(json.dumps(code), flush=True)
"""


class Worker:
    """A forking test runner in its own copy of the repository."""

    def __init__(self, copy: Path) -> None:
        self.copy = copy
        env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(copy)], cwd=copy, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def pytest(self, relpath: str, timeout: float) -> tuple[int | None, float]:
        """Run the tests of ``relpath`` (and its doctests); the exit status (None: timed out) and seconds."""
        tests = [t for t in TESTS[relpath] if _present(self.copy, t)]
        args = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", f"scratchllm/{relpath}", *tests]
        begin = time.perf_counter()
        self.proc.stdin.write(json.dumps([args, timeout]) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline()), time.perf_counter() - begin

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _make_copy(root: Path) -> Path:
    copy = Path(tempfile.mkdtemp(prefix="scratchllm-mutate-", dir=root))
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "runs", "*.egg-info", "build")
    for item in REPO.iterdir():
        if item.name in (".git", ".venv", "runs", "build", ".pytest_cache") or item.name.endswith(".egg-info"):
            continue
        if item.is_dir():
            shutil.copytree(item, copy / item.name, ignore=ignore)
        else:
            shutil.copy2(item, copy / item.name)
    return copy


def run(files: list[str], max_per_file: int, workers: int, seed: int, timeout_factor: float) -> dict:
    """Baseline each file's tests, then every (sampled) mutant; a report per file."""
    root = Path(tempfile.mkdtemp(prefix="scratchllm-mutants-"))
    pool_of = [Worker(_make_copy(root)) for _ in range(workers)]
    free = list(pool_of)
    lock = threading.Lock()
    report: dict = {"files": {}}
    try:
        for relpath in files:
            source = (PACKAGE / relpath).read_bytes()
            mutants = find_mutants(relpath, source)
            total = len(mutants)
            if max_per_file and total > max_per_file:
                mutants = sorted(random.Random(seed).sample(mutants, max_per_file), key=lambda m: m.start)
            code, base_s = pool_of[0].pytest(relpath, timeout=900)
            if code != 0:
                raise SystemExit(f"the tests of {relpath} fail without any mutant (exit status {code}): "
                                 f"run them: pytest -x scratchllm/{relpath} {' '.join(TESTS[relpath])}")
            timeout = max(20.0, timeout_factor * base_s)
            print(f"{relpath}: {len(mutants)} of {total} mutants, tests take {base_s:.1f} s unmutated "
                  f"(timeout {timeout:.0f} s)", flush=True)

            done: list[str] = []

            def one(mutant: Mutant, source: bytes = source, relpath: str = relpath, timeout: float = timeout,
                    done: list[str] = done, n: int = len(mutants)) -> Result:
                with lock:
                    worker = free.pop()
                target = worker.copy / "scratchllm" / relpath
                try:
                    target.write_bytes(mutant.apply(source))
                    code, seconds = worker.pytest(relpath, timeout)
                finally:
                    target.write_bytes(source)
                    with lock:
                        free.append(worker)
                outcome = "timeout" if code is None else "survived" if code == 0 else "killed"
                with lock:
                    done.append(outcome)
                    print(f"  [{len(done)}/{n}] line {mutant.line} ({mutant.kind}): {outcome} "
                          f"in {seconds:.1f} s", flush=True)
                return Result(mutant, outcome, seconds)

            begin = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(one, mutants))
            survivors = [r for r in results if r.outcome == "survived"]
            killed = len(results) - len(survivors)
            report["files"][relpath] = {
                "mutants": len(results), "of": total, "killed": killed, "survived": len(survivors),
                "timeouts": sum(r.outcome == "timeout" for r in results),
                "seconds": round(time.perf_counter() - begin, 1),
                "survivors": [asdict(r.mutant) | {"diff": r.mutant.diff(source)} for r in survivors],
            }
            rate = len(survivors) / len(results) if results else 0.0
            print(f"  killed {killed}, survived {len(survivors)} ({rate:.0%}) in {time.perf_counter() - begin:.0f} s",
                  flush=True)
            for r in survivors:
                before, after = r.mutant.diff(source)
                print(f"  survived scratchllm/{relpath}:{r.mutant.line} ({r.mutant.kind})\n"
                      f"    - {before.strip()}\n    + {after.strip()}", flush=True)
    finally:
        for worker in pool_of:
            worker.close()
        shutil.rmtree(root, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="*", default=list(TESTS), help="targets under scratchllm/ (default: all)")
    parser.add_argument("--max-per-file", type=int, default=30, help="mutants sampled per file (0 = all)")
    parser.add_argument("--workers", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="which mutants are sampled")
    parser.add_argument("--timeout-factor", type=float, default=4.0,
                        help="a mutant's tests may take this many times the unmutated run")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--list", action="store_true", help="print the mutants and run nothing")
    args = parser.parse_args(argv)
    unknown = [f for f in args.files if f not in TESTS]
    if unknown:
        parser.error(f"no test subset for {', '.join(unknown)}; known: {', '.join(TESTS)}")
    if args.list:
        for relpath in args.files:
            source = (PACKAGE / relpath).read_bytes()
            for m in find_mutants(relpath, source):
                print(f"scratchllm/{relpath}:{m.line} ({m.kind}): {m.original!r} -> {m.replacement!r}")
        return 0
    # a kill (SIGTERM) unwinds like an error: the workers stop and the copies are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    begin = time.perf_counter()
    report = run(args.files, args.max_per_file, args.workers, args.seed, args.timeout_factor)
    report["seconds"] = round(time.perf_counter() - begin, 1)
    print("\n| file | mutants (of all) | killed | survived | survival |\n|---|---|---|---|---|")
    for relpath, r in report["files"].items():
        print(f"| {relpath} | {r['mutants']} ({r['of']}) | {r['killed']} | {r['survived']} | "
              f"{r['survived'] / max(r['mutants'], 1):.0%} |")
    print(f"\n{report['seconds']:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
