"""A choice's streamed text against the whole text decoded at once and cut with ``str.find``."""

from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.inference import StopStrings
from scratchllm.serve.batcher import TokenEvent
from scratchllm.serve.output import ChoiceOutput
from scratchllm.tokenizer import ENDOFTEXT, BPETokenizer

TOKENIZER = BPETokenizer.train("né à la fête, l'été: ünïcödé 😀 " * 3 + "the cat sat on the mat " * 5,
                               vocab_size=280, progress=False)
EOT = TOKENIZER.special_tokens[ENDOFTEXT]
ORDINARY = [i for i in range(TOKENIZER.vocab_size) if i not in TOKENIZER.special_tokens.values()]


def first_cut(text, stops):
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def stream(tokens, stops, last="length"):
    out = ChoiceOutput(TOKENIZER, stops)
    deltas = [out.push(TokenEvent(t, last if i == len(tokens) - 1 else None, -1.0)) for i, t in enumerate(tokens)]
    return out, deltas


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.sampled_from(ORDINARY), min_size=1, max_size=30),
       stops=st.lists(st.text(alphabet="the catéà😀\ufffd", min_size=1, max_size=4), max_size=3))
def test_the_deltas_join_to_the_decoded_text_cut_before_the_first_stop_string(tokens, stops):
    out, deltas = stream(tokens, stops)
    expected, stopped = first_cut(TOKENIZER.decode(tokens), stops)
    assert "".join(d.text for d in deltas) == out.text == expected
    assert out.finish == ("stop" if stopped else "length")
    assert [d.finish for d in deltas if d.finish] == [out.finish]
    assert out.n_tokens == next((i + 1 for i, d in enumerate(deltas) if d.finish), len(tokens))
    # every sent token goes out once, in order, with the offset where its text starts
    sent = [(start, t.token) for d in deltas for start, t in d.tokens]
    assert [t for _, t in sent] == tokens[: len(sent)]
    if not stopped:
        assert len(sent) == len(tokens)
    for start, _ in sent:
        assert start <= len(out.text)


def test_an_end_of_text_token_ends_the_choice_without_text():
    ids = TOKENIZER.encode("the cat")
    out, deltas = stream([*ids, EOT], [], last="stop")
    assert out.text == "the cat" and out.finish == "stop" and out.n_tokens == len(ids) + 1
    assert [t.token for d in deltas for _, t in d.tokens] == ids


def test_a_stop_string_split_over_three_tokens_is_held_back_until_it_is_sure():
    ids = [TOKENIZER.encode(c)[0] for c in "sat on"]  # one token per character
    out = ChoiceOutput(TOKENIZER, ["t o"])
    sent = [out.push(TokenEvent(t, None)).text for t in ids]
    assert sent == ["s", "a", "", "", "", ""] and out.finish == "stop" and out.text == "sa"


def test_stop_strings_hold_only_what_could_begin_one():
    stops = StopStrings(["abc"])
    assert stops.push("xxab") == ("xx", False)
    assert stops.push("x") == ("abx", False)
    assert stops.push("ab") == ("", False) and stops.flush() == "ab"
