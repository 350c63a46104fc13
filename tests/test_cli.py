import pytest

from scratchllm.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "scratchllm" in capsys.readouterr().out


def test_mistyped_command_suggests_the_right_one(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tokenzer"])
    assert exc.value.code != 0
    assert "did you mean 'tokenizer'" in capsys.readouterr().err
