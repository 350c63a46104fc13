import pytest

from scratchllm.fileio import atomic_path, atomic_write_json, atomic_write_text


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_directory_replaced_whole(tmp_path):
    target = tmp_path / "ckpt"
    for version in ("1", "2"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            atomic_write_json(tmp / "state.json", {"v": version})
    assert (target / "state.json").read_text().strip().endswith("}")
    assert '"2"' in (target / "state.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
