import pytest

from scratchllm.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "scratchllm" in capsys.readouterr().out
