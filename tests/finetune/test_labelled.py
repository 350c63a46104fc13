"""Labelled data: CSV/TSV/JSONL reading, one-line errors naming the file and line, the balanced
subset and the split, and the SMS Spam Collection fetched from a loopback server."""

from __future__ import annotations

import io
import zipfile
from collections import Counter

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.finetune import labelled
from scratchllm.finetune.labelled import balance, label_names, load_examples, read_labelled, split_examples

SMS = 'ham\tOk lar... "Joking" wif u oni...\nspam\tFree entry in 2 a wkly comp, text "WIN" now\nham\tU dun say so\n'


def test_csv_tsv_and_jsonl_give_the_same_examples(tmp_path):
    want = [('a "quoted", text', "pos"), ("plain", "neg")]
    (tmp_path / "d.csv").write_text('review,stars\n"a ""quoted"", text",pos\nplain,neg\n', encoding="utf-8")
    (tmp_path / "d.tsv").write_text('stars\treview\npos\ta "quoted", text\nneg\tplain\n', encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"review": "a \\"quoted\\", text", "stars": "pos"}\n\n'
                                      '{"review": "plain", "stars": "neg", "extra": 1}\n', encoding="utf-8")
    for name in ("d.csv", "d.tsv", "d.jsonl"):
        assert read_labelled(tmp_path / name, text_column="review", label_column="stars") == want, name


def test_a_headerless_tsv_keeps_stray_quotes(tmp_path):
    (tmp_path / "SMSSpamCollection").write_text(SMS, encoding="utf-8")
    got = read_labelled(tmp_path / "SMSSpamCollection", columns=("label", "text"))
    assert got[0] == ('Ok lar... "Joking" wif u oni...', "ham") and [lab for _, lab in got] == ["ham", "spam", "ham"]


@pytest.mark.parametrize("name, content, message", [
    ("d.csv", "text,stars\nhi,1\n", r"d.csv has no column 'label' \(it has: stars, text\)"),
    ("d.csv", "", "d.csv holds no examples"),
    ("d.jsonl", "", "d.jsonl holds no examples"),
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: "y"}\n', r"d.jsonl:2: not a JSON record"),
    ("d.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n', r"d.jsonl:2: a JSON object was expected, got list"),
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', r"d.jsonl:2: the record has no label"),
    ("d.tsv", "text\tlabel\na\tx\nb\n", r"d.tsv:3: 1 fields where the header name 2"),
])
def test_bad_files_are_one_line_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ScratchLLMError, match=message) as err:
        read_labelled(tmp_path / name)
    assert "\n" not in str(err.value)


def test_one_class_only_is_refused():
    with pytest.raises(ScratchLLMError, match="data.csv has 1 class \\(ham\\); a classifier needs at least two"):
        label_names([("a", "ham"), ("b", "ham")], "data.csv")


def test_the_balanced_subset_and_the_split():
    examples = [(f"t{i}", "spam" if i % 5 == 0 else "ham") for i in range(100)]  # 20 spam, 80 ham
    kept = balance(examples, seed=123)
    assert Counter(lab for _, lab in kept) == {"ham": 20, "spam": 20}
    assert all(ex in examples for ex in kept) and kept == balance(examples, seed=123) != balance(examples, seed=1)
    train, val, test = split_examples(kept, seed=123)
    assert (len(train), len(val), len(test)) == (28, 4, 8)  # 70 / 10 / 20
    assert sorted(train + val + test) == sorted(kept)
    assert split_examples(kept, seed=123) == (train, val, test)


def _zip(member: str, text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(member, text)
        zf.writestr("readme", "SMS Spam Collection v.1")
    return buffer.getvalue()


def test_sms_spam_is_downloaded_once_extracted_and_checked(server, tmp_path, monkeypatch):
    (server.root / "sms.zip").write_bytes(_zip("SMSSpamCollection", SMS))
    monkeypatch.setattr(labelled, "SMS_SPAM_URL", f"{server.url}/sms.zip")
    cache = tmp_path / "cache"
    got = load_examples("sms-spam", cache_dir=cache)
    assert got == read_labelled(tmp_path / "cache" / "sms-spam" / "SMSSpamCollection", columns=("label", "text"))
    assert [lab for _, lab in got] == ["ham", "spam", "ham"] and got[1][0].startswith("Free entry")
    assert load_examples("sms-spam", cache_dir=cache) == got and server.requests == 1  # the cache is reused


def test_a_zip_that_is_not_the_sms_collection_is_refused(server, tmp_path, monkeypatch):
    (server.root / "sms.zip").write_bytes(_zip("SMSSpamCollection", "ham\tok\nmaybe\tnot a label\n"))
    monkeypatch.setattr(labelled, "SMS_SPAM_URL", f"{server.url}/sms.zip")
    with pytest.raises(ScratchLLMError, match=r"SMSSpamCollection:2 is not 'ham\|spam<TAB>text'"):
        load_examples("sms-spam", cache_dir=tmp_path / "cache")
    (server.root / "other.zip").write_bytes(_zip("something-else.txt", SMS))
    monkeypatch.setattr(labelled, "SMS_SPAM_URL", f"{server.url}/other.zip")
    with pytest.raises(ScratchLLMError, match="is not UCI's SMS Spam Collection zip"):
        load_examples("sms-spam", cache_dir=tmp_path / "cache2")
