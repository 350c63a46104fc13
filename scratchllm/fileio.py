"""Files a user keeps: atomic writes, and JSON reads that fail with one clear line.

Every file a user keeps (tokenizers, shards, checkpoints, configs) is written to a temporary
name in the same directory and then renamed over the target, which POSIX makes atomic: a reader
sees the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    Works for a file or a directory written at the yielded path. On error the temporary is
    removed and ``path`` is untouched.

    >>> with atomic_path("out.txt") as tmp:          # doctest: +SKIP
    ...     tmp.write_text("hello")
    """
    path = Path(path)
    created = make_parents(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except BaseException:
        remove_empty(created)
        raise
    tmp.rmdir()  # the caller creates a file or a directory here
    done = False
    try:
        yield tmp
        if not tmp.is_dir() and path.is_dir():
            raise ScratchLLMError(f"{path} is a folder, not a file: give a file's path")
        if tmp.is_dir() and path.is_dir():
            # A directory cannot be renamed over a non-empty one: move the old one aside first,
            # so that at every instant one complete version exists under some name.
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
        done = True
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        if not done:  # no empty folder is left behind by a write that failed
            remove_empty(created)


def make_parents(path: Path) -> list[Path]:
    """Create ``path``'s missing parent folders; return those it created, innermost first."""
    created = [p for p in path.parents if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (innermost first) that is empty; leave any other alone."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """The parsed contents of a JSON file; a missing, unreadable or corrupt one raises a one-line
    ``ScratchLLMError`` that names the file and ends with ``fix`` (what the user can do).

    >>> read_json("no-such.json", "run `scratchllm prepare` first")
    Traceback (most recent call last):
    ...
    scratchllm.errors.ScratchLLMError: no-such.json is missing; run `scratchllm prepare` first
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScratchLLMError(f"{path} is missing; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScratchLLMError(f"{path} is unreadable or corrupt ({err}); {fix}") from None


def check_replaceable(out: str | os.PathLike, marker: str, what: str, *, force: bool | None = None) -> None:
    """Refuse to let a command replace ``out`` unless it is absent, an empty folder, or a folder the
    command wrote itself (it holds the file ``marker``): an atomic replace deletes what was there.

    ``what`` names such a folder ("a prepared data folder"). With ``force=False`` even a folder the
    command wrote is kept unless the user passes ``--force``; ``None`` replaces it without asking.

    >>> check_replaceable("no-such-folder", "manifest.json", "a prepared data folder")
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ScratchLLMError(f"{out} is a file, not a folder: give --out a new or empty folder")
    if not any(out.iterdir()):
        return
    if not (out / marker).is_file():
        raise ScratchLLMError(f"{out} exists and is not {what} (no {marker}), so it is kept: give --out a new or "
                              "empty folder")
    if force is False:
        raise ScratchLLMError(f"{out} already holds {what}: pass --force to replace it, or give --out a new folder")


LOCK_FILE = ".scratchllm.lock"
_HELD_LOCKS: set[Path] = set()  # lock files this process holds (a nested lock of the same folder is a no-op)


@contextlib.contextmanager
def exclusive_lock(folder: str | os.PathLike, lock_file: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (the file ``folder/.scratchllm.lock``, or ``lock_file``)
    for the block; a second process fails at once with "FOLDER is in use by pid N".

    ``fcntl.flock`` is released by the OS when the process ends, crash or SIGKILL included, so a
    stale lock file never blocks anyone. A folder this creates and leaves empty is removed again.
    Within one process the lock nests: a command that writes into a run folder before the
    trainer runs there (which locks it too) holds it across both.
    """
    folder = Path(folder)
    lock = Path(lock_file) if lock_file is not None else folder / LOCK_FILE
    if folder.exists() and not folder.is_dir():
        raise ScratchLLMError(f"{folder} is a file, not a folder: give a folder's path")
    key = lock.absolute()
    if key in _HELD_LOCKS:
        yield
        return
    try:
        created = make_parents(lock)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise ScratchLLMError(f"{folder} is in use by pid {holder}: wait for it to finish, or stop it "
                                      "(another scratchllm process is writing there)") from None
            # The holder before us may have removed the file after we opened it: lock the file on disk.
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
    except OSError as err:
        raise ScratchLLMError(f"cannot lock {folder}: {os.strerror(err.errno or errno.EIO)} ({lock}): "
                              "give a folder you can write to") from None
    _HELD_LOCKS.add(key)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        _HELD_LOCKS.discard(key)
        with contextlib.suppress(OSError):
            os.unlink(lock)  # before unlocking, so that whoever locks next locks a fresh file
        os.close(fd)
        remove_empty(created)  # folders made only to hold the lock


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` for each non-blank line of a JSON-lines file; a line that is not
    JSON is one ``ScratchLLMError`` naming the file and the line."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ScratchLLMError(f"{path}:{line_no}: not a JSON record ({err.msg}): fix or remove the line") \
                    from None
            yield line_no, record
