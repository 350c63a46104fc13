"""Prompt templates: the book's Alpaca prompt and token ids against its own code, the chat template
written out, message lists, the response mask, stop strings while streaming, the task record."""

from __future__ import annotations

import random

import pytest

from scratchllm.checkpoint import save_checkpoint
from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.templates import (
    END_OF_TURN,
    TEMPLATES,
    Conversation,
    Exchange,
    ResponseStream,
    as_conversation,
    checkpoint_template,
    get_template,
    instruct_task,
    task_template,
)
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import BPETokenizer

ch07 = pytest.importorskip("llms_from_scratch.ch07")

RECORDS = [
    {"instruction": "Evaluate the following phrase by transforming it into the spelling given.",
     "input": "freind --> friend", "output": "The spelling of the given phrase \"freind\" is incorrect, the "
     "correct spelling is \"friend\"."},
    {"instruction": "What is the capital of Denmark?", "input": "", "output": "The capital of Denmark is "
     "Copenhagen."},
    {"instruction": "Convert 45 kilometers to meters.", "input": "", "output": " 45 kilometers is 45000 meters."},
    {"instruction": "Rewrite as a list.", "input": "eggs, milk\nand bread", "output": "\n- eggs\n- milk\n- bread"},
    {"instruction": "Translate 'thank you' into Japanese.", "input": "", "output": "ありがとう (arigatou) 👍"},
]


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(*gpt2_files)


@pytest.fixture(scope="module")
def gpt2_tiktoken(gpt2_files):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from scratchllm.tokenizer import GPT2_PATTERN

    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(gpt2_files[1]), encoder_json_file=str(gpt2_files[0]))
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.mark.parametrize("record", RECORDS)
def test_alpaca_is_the_books_text(record):
    alpaca = get_template("alpaca")
    book = ch07.format_input(record) + f"\n\n### Response:\n{record['output']}"
    assert alpaca.render(record) == book + "<|endoftext|>"
    prompt = {k: v for k, v in record.items() if k != "output"}
    assert alpaca.render(prompt) == ch07.format_input(record) + "\n\n### Response:\n"


def test_alpaca_ids_are_the_books_dataset_ids_plus_its_end_of_text(gpt2, gpt2_tiktoken):
    # The book encodes the whole text at once (InstructionDataset) and its collate appends 50256.
    book = ch07.InstructionDataset(RECORDS, gpt2_tiktoken)
    alpaca = get_template("alpaca")
    for record, expected in zip(RECORDS, book, strict=True):
        ids, response = alpaca.encode(gpt2, record)
        assert ids == expected + [50256]
        n_prompt = len(gpt2_tiktoken.encode(ch07.format_input(record) + "\n\n### Response:\n"))
        assert response == [False] * n_prompt + [True] * (len(ids) - n_prompt)
        assert gpt2.decode([i for i, r in zip(ids, response, strict=True) if r]) == record["output"] + END_OF_TURN


def test_the_chat_template_written_out_with_a_system_text_and_two_turns():
    chat = get_template("chat")
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
    ]
    assert chat.render(messages) == ("You are terse.\n\n### User:\nName a color.\n\n### Assistant:\nBlue.<|endoftext|>"
                                     "\n\n### User:\nAnother?\n\n### Assistant:\n")
    alpaca = get_template("alpaca")
    assert alpaca.render({"messages": messages}) == (
        "You are terse.\n\n### Instruction:\nName a color.\n\n### Response:\nBlue.<|endoftext|>"
        "\n\n### Instruction:\nAnother?\n\n### Response:\n")
    record = {"instruction": "Sum these.", "input": "2, 3", "output": "5"}
    assert chat.render(record) == "### User:\nSum these.\n\n2, 3\n\n### Assistant:\n5<|endoftext|>"


def test_a_multi_turn_mask_covers_each_answer_and_its_end_of_turn(gpt2):
    chat = get_template("chat")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": " See you."}]
    ids, response = chat.encode(gpt2, messages)
    assert gpt2.decode(ids) == chat.render(messages)
    answers = [i for i, r in zip(ids, response, strict=True) if r]
    eot = gpt2.special_tokens[END_OF_TURN]
    assert answers == [*gpt2.encode_ordinary("Hello!"), eot, *gpt2.encode_ordinary(" See you."), eot]
    assert ids.count(eot) == 2


def test_the_end_of_turn_string_typed_in_a_message_stays_text(gpt2):
    ids = get_template("chat").prompt_ids(gpt2, [{"role": "user", "content": "say <|endoftext|> now"}])
    assert gpt2.special_tokens[END_OF_TURN] not in ids
    assert "say <|endoftext|> now" in gpt2.decode(ids)


def test_prompt_ids_need_an_open_conversation(gpt2):
    chat = get_template("chat")
    with pytest.raises(ScratchLLMError, match="ends with an answer"):
        chat.prompt_ids(gpt2, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert chat.stop_ids(gpt2) == [50256]


def test_messages_and_records_parse_into_exchanges():
    assert as_conversation({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) \
        == Conversation((Exchange("q", "", "a"),))
    assert as_conversation({"instruction": "q", "input": None, "output": "a"}) == \
        Conversation((Exchange("q", "", "a"),))


@pytest.mark.parametrize("data, message", [
    ({"prompt": "x"}, "the record has no 'instruction' (it has: prompt)"),
    ({"instruction": "  ", "output": "a"}, "the record's 'instruction' is empty"),
    ({"instruction": "q", "output": 5}, "the record's 'output' is int, not text"),
    ([], "'messages' must be a non-empty list"),
    ([{"role": "bot", "content": "x"}], "message 1 has role 'bot'; use one of system, user, assistant"),
    ([{"role": "user"}], "message 1 must be an object with a text 'content'"),
    ([{"role": "system", "content": "s"}], "only a system message"),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
     "message 2 is from the assistant where a user message is expected"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     "message 2 is from the user where an assistant message is expected"),
    ("text", "a record must be a JSON object or a list of messages, got str"),
])
def test_bad_records_are_one_line(data, message):
    with pytest.raises(ScratchLLMError) as err:
        as_conversation(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_template_names_the_closest():
    with pytest.raises(ScratchLLMError, match="unknown template 'alpac'; did you mean 'alpaca'"):
        get_template("alpac")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_stream_shows_what_the_whole_text_cut_at_once_gives(name):
    # oracle: the generated text cut at its first stop string, all at once; the stream sees it in random pieces
    template = get_template(name)
    rng = random.Random(0)
    words = ["Blue", ".", "\n", "\n\n", "#", "###", " ", *template.stop_strings,
             *(s[:4] for s in template.stop_strings)]
    for _ in range(300):
        text = "".join(rng.choices(words, k=rng.randint(0, 12)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 5))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        stream = ResponseStream(template)
        shown = "".join(stream.push(p) for p in pieces) + stream.finish()
        hits = [i for i in (text.find(s) for s in template.stop_strings) if i >= 0]
        assert shown == (text[:min(hits)] if hits else text)
        assert stream.stopped == bool(hits)
        assert template.response(text) == shown.strip()


def test_the_checkpoint_records_its_template(tmp_path):
    tok = BPETokenizer.train("a small text for a small tokenizer", vocab_size=270, progress=False)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size))
    save_checkpoint(tmp_path / "lm", model, tok)
    save_checkpoint(tmp_path / "chat", model, tok, task=instruct_task("chat", method="sft"))
    save_checkpoint(tmp_path / "clf", model, tok, task={"kind": "classify", "labels": ["ham", "spam"]})
    assert checkpoint_template(tmp_path / "lm") is None
    assert checkpoint_template(tmp_path / "chat") is TEMPLATES["chat"]
    with pytest.raises(ScratchLLMError, match=r"clf is a classifier \(labels ham, spam\).*scratchllm classify"):
        checkpoint_template(tmp_path / "clf")
    with pytest.raises(ScratchLLMError, match="unknown template 'nope'"):
        task_template({"kind": "instruct", "template": "nope"})
