import pytest

from scratchllm.inference import TextStream
from scratchllm.tokenizer import BPETokenizer

TEXT = "Héllo, wörld! 日本語 and 🙂 too: ça va? Ünïcödé"


@pytest.fixture(scope="module")
def tokenizers(gpt2_files):
    byte_level = BPETokenizer.train("abc", vocab_size=258, progress=False)  # one token per byte
    return [byte_level, BPETokenizer.from_gpt2_files(*gpt2_files)]


def test_streamed_text_equals_decoding_the_whole_sequence(tokenizers):
    for tok in tokenizers:
        ids = tok.encode(TEXT)
        text = TextStream(tok)
        pieces = [text.push(i) for i in ids]
        assert "".join(pieces) + text.finish() == tok.decode(ids) == TEXT
        assert all("\ufffd" not in p for p in pieces)  # a split character waits for its last byte
    byte_ids = tokenizers[0].encode("🙂")
    text = TextStream(tokenizers[0])
    assert [text.push(i) for i in byte_ids] == ["", "", "", "🙂"]


def test_a_character_cut_off_at_the_end_is_replaced_as_decode_does(tokenizers):
    tok = tokenizers[0]
    ids = tok.encode("aé")[:-1]  # "a" and the first byte of "é"
    text = TextStream(tok)
    streamed = "".join(text.push(i) for i in ids) + text.finish()
    assert streamed == tok.decode(ids) == "a\ufffd"
