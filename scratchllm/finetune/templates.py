"""Prompt templates: how an instruction, or a conversation, becomes the text a model is tuned on,
and the text it continues when it answers.

Two templates, looked up by name (``get_template``):

``alpaca``, the book's chapter-7 prompt (Stanford Alpaca's), character for character what the
book's ``format_input`` and ``InstructionDataset`` write::

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:                          <- only when the record has an input
    {input}

    ### Response:
    {output}<|endoftext|>

``chat``, role headers for message lists (an optional system message first)::

    {system}                            <- only with a system message

    ### User:
    {content}

    ### Assistant:
    {content}<|endoftext|>

A conversation is a list of exchanges (an instruction, an optional input, a response), and each
template renders both kinds of data: a ``{instruction, input, output}`` record is one exchange, a
message list one exchange per user message (the assistant message after it is its response); the
``chat`` template writes an input under its instruction after a blank line. A later exchange
repeats only the headers (``### Instruction:`` ... for alpaca). A ``system`` message replaces
alpaca's first sentence and is ``chat``'s first paragraph.

Every response ends with the end-of-turn token ``<|endoftext|>`` (``END_OF_TURN``): the book's
collate appends it so that the model learns to stop, and generation stops on it (``stop_ids``).
It is a token id, never text: a message holding the string ``<|endoftext|>`` is encoded as plain
text and cannot end a turn. A model that runs on past its answer into the next header is cut
there (``stop_strings``, ``ResponseStream``).

A checkpoint records the template it was tuned with in its task record
(``instruct_task(template)`` -> ``{"kind": "instruct", "template": "alpaca"}``), which
``checkpoint_template`` reads back for ``scratchllm chat`` and the server.

>>> alpaca = get_template("alpaca")
>>> print(alpaca.render({"instruction": "Name a color.", "input": "", "output": "Blue."}))
Below is an instruction that describes a task. Write a response that appropriately completes the request.
<BLANKLINE>
### Instruction:
Name a color.
<BLANKLINE>
### Response:
Blue.<|endoftext|>
>>> print(get_template("chat").render([{"role": "user", "content": "Hi!"}]))
### User:
Hi!
<BLANKLINE>
### Assistant:
<BLANKLINE>
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scratchllm.errors import ScratchLLMError, did_you_mean
from scratchllm.inference.text import StopStrings, cut_at_stop
from scratchllm.tokenizer import ENDOFTEXT

END_OF_TURN = ENDOFTEXT  # the token that closes every response
TASK = "instruct"  # the task record's kind for a model tuned to follow instructions
DEFAULT_TEMPLATE = "alpaca"
ROLES = ("system", "user", "assistant")

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")


@dataclass(frozen=True)
class Exchange:
    """One turn of a conversation: what was asked, and the answer (None: the model's turn)."""

    instruction: str
    input: str = ""
    response: str | None = None


@dataclass(frozen=True)
class Conversation:
    """Exchanges in order, after an optional system text; only the last may lack its response."""

    exchanges: tuple[Exchange, ...]
    system: str | None = None

    @property
    def is_open(self) -> bool:
        """Whether it ends with the model's turn (its last exchange has no response)."""
        return self.exchanges[-1].response is None

    def to_prompt(self) -> Conversation:
        """The conversation without its last response: what the model is asked to answer."""
        last = self.exchanges[-1]
        return Conversation((*self.exchanges[:-1], Exchange(last.instruction, last.input)), self.system)


ConversationLike = Conversation | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def as_conversation(data: ConversationLike) -> Conversation:
    """A ``Conversation`` from a record of the book's format (``instruction``, optional ``input``,
    ``output``: without an output it is a prompt), ``{"messages": [...]}``, or a message list
    (``[{"role": ..., "content": ...}, ...]``: optional system first, then user and assistant in
    turn, ending with either). Anything else is one line saying what was wrong.

    >>> as_conversation({"instruction": "Add 2 and 3.", "input": "", "output": "5"})
    Conversation(exchanges=(Exchange(instruction='Add 2 and 3.', input='', response='5'),), system=None)
    >>> as_conversation([{"role": "user", "content": "Hi"}]).is_open
    True
    """
    if isinstance(data, Conversation):
        return data
    if isinstance(data, Mapping) and "messages" in data:
        return _from_messages(data["messages"])
    if isinstance(data, Mapping):
        if "instruction" not in data:
            keys = ", ".join(sorted(map(str, data))) or "no keys"
            raise ScratchLLMError(f"the record has no 'instruction' (it has: {keys}); give {{instruction, input, "
                                  "output}} as the book's data does, or {{messages: [...]}}")
        instruction, input_, output = data["instruction"], data.get("input") or "", data.get("output")
        for key, value in (("instruction", instruction), ("input", input_), ("output", output)):
            if value is not None and not isinstance(value, str):
                raise ScratchLLMError(f"the record's '{key}' is {type(value).__name__}, not text")
        if not instruction.strip():
            raise ScratchLLMError("the record's 'instruction' is empty")
        return Conversation((Exchange(instruction, input_, output),))
    if isinstance(data, Sequence) and not isinstance(data, str):
        return _from_messages(data)
    raise ScratchLLMError(f"a record must be a JSON object or a list of messages, got {type(data).__name__}")


def _from_messages(messages: Any) -> Conversation:
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ScratchLLMError("'messages' must be a non-empty list of {role, content} objects")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise ScratchLLMError(f"message {i + 1} must be an object with a text 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise ScratchLLMError(f"message {i + 1} has role {role!r}; use one of {', '.join(ROLES)}")
        parsed.append((role, message["content"]))
    system = None
    if parsed[0][0] == "system":
        system, parsed = parsed[0][1], parsed[1:]
    if not parsed:
        raise ScratchLLMError("the messages hold only a system message; add a user message")
    exchanges = []
    for i in range(0, len(parsed), 2):
        offset = i + 1 + (system is not None)
        if parsed[i][0] != "user":
            raise ScratchLLMError(f"message {offset} is from the {parsed[i][0]} where a user message is expected "
                                  "(after an optional system message, user and assistant take turns)")
        response = None
        if i + 1 < len(parsed):
            if parsed[i + 1][0] != "assistant":
                raise ScratchLLMError(f"message {offset + 1} is from the {parsed[i + 1][0]} where an assistant "
                                      "message is expected (user and assistant take turns)")
            response = parsed[i + 1][1]
        exchanges.append(Exchange(parsed[i][1], "", response))
    return Conversation(tuple(exchanges), system)


@dataclass(frozen=True)
class Template:
    """How exchanges become text: headers around each instruction, input and response.

    ``prompt_text(conversation, i)`` is the text before the i-th response (for i > 0 it follows
    the end-of-turn token of the response before it); the response follows it directly.
    """

    name: str
    description: str
    preamble: str  # what opens the first prompt ("" for none); a system message replaces it
    instruction_header: str
    input_header: str | None  # None: the input follows the instruction after a blank line
    response_header: str

    def prompt_text(self, conversation: Conversation, i: int) -> str:
        """The text of exchange ``i`` up to where its response starts."""
        exchange = conversation.exchanges[i]
        opening = (conversation.system if conversation.system is not None else self.preamble) if i == 0 else None
        text = f"{opening}\n\n" if opening else ("" if i == 0 else "\n\n")
        text += f"{self.instruction_header}\n{exchange.instruction}"
        if exchange.input:
            text += f"\n\n{self.input_header}\n{exchange.input}" if self.input_header else f"\n\n{exchange.input}"
        return text + f"\n\n{self.response_header}\n"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text that cannot be part of a response: a model that writes it has run into the next turn."""
        headers = (self.instruction_header, self.input_header, self.response_header)
        return tuple(f"\n\n{h}" for h in headers if h)

    def render(self, data: ConversationLike) -> str:
        """The whole text, ``<|endoftext|>`` written out where each response's end-of-turn token goes;
        an open conversation ends with the response header (the text the model continues)."""
        conversation = as_conversation(data)
        parts = []
        for i, exchange in enumerate(conversation.exchanges):
            parts.append(self.prompt_text(conversation, i))
            if exchange.response is not None:
                parts.append(exchange.response + END_OF_TURN)
        return "".join(parts)

    def encode(self, tokenizer: Any, data: ConversationLike) -> tuple[list[int], list[bool]]:
        """Token ids of the rendered conversation, and for each whether it is part of a response
        (its end-of-turn token included): what prompt masking trains on.

        Each prompt and each response is encoded on its own (``encode_ordinary``: special-token
        strings in the text stay text), as the model is prompted when it answers, and the
        end-of-turn is its token id. A prompt ends with a newline, where GPT-2's split pattern
        always cuts, so with it this equals encoding the whole text at once, as the book does
        (tests/finetune/test_templates.py); GPT-4's pattern joins a newline that starts a response
        to the prompt's, so there the two can differ.
        """
        conversation = as_conversation(data)
        eot = end_of_turn_id(tokenizer)
        ids: list[int] = []
        response: list[bool] = []
        for i, exchange in enumerate(conversation.exchanges):
            prompt = tokenizer.encode_ordinary(self.prompt_text(conversation, i))
            ids += prompt
            response += [False] * len(prompt)
            if exchange.response is not None:
                answer = [*tokenizer.encode_ordinary(exchange.response), eot]
                ids += answer
                response += [True] * len(answer)
        return ids, response

    def prompt_ids(self, tokenizer: Any, data: ConversationLike) -> list[int]:
        """The ids a model continues to answer an open conversation (one ending with a user message
        or a record without an output)."""
        conversation = as_conversation(data)
        if not conversation.is_open:
            raise ScratchLLMError("the conversation ends with an answer: end it with a user message (or leave out the "
                                  "record's output) for the model to answer")
        return self.encode(tokenizer, conversation)[0]

    def stop_ids(self, tokenizer: Any) -> list[int]:
        """The token ids that end a response: the end-of-turn token."""
        return [end_of_turn_id(tokenizer)]

    def response(self, generated: str) -> str:
        """A generated answer as a user reads it: cut at the first stop string, stripped."""
        return cut_at_stop(generated, self.stop_strings)[0].strip()


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("alpaca", "the book's chapter-7 prompt (Stanford Alpaca's): ### Instruction / ### Input / "
                 "### Response", ALPACA_PREAMBLE, "### Instruction:", "### Input:", "### Response:"),
        Template("chat", "role headers for message lists: an optional system text, ### User / ### Assistant",
                 "", "### User:", None, "### Assistant:"),
    )
}


def get_template(name: str) -> Template:
    """The template called ``name`` (see ``TEMPLATES``); a misspelt name gets the closest suggested."""
    if name not in TEMPLATES:
        raise ScratchLLMError(f"unknown template {name!r}{did_you_mean(name, TEMPLATES)}; "
                              f"the templates are {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def end_of_turn_id(tokenizer: Any) -> int:
    """The id of ``<|endoftext|>``, which closes each response."""
    eot = getattr(tokenizer, "special_tokens", {}).get(END_OF_TURN)
    if eot is None:
        raise ScratchLLMError(f"the tokenizer has no {END_OF_TURN} token to end a response with")
    return eot


# -- what a checkpoint records --------------------------------------------------------------

def instruct_task(template: Template | str, **extra: Any) -> dict[str, Any]:
    """The task record of a model tuned to follow instructions with ``template`` (``extra``: e.g.
    how it was tuned), for ``save_checkpoint(task=...)`` and the ``Trainer``'s ``task``.

    >>> instruct_task("alpaca", method="dpo")
    {'kind': 'instruct', 'template': 'alpaca', 'method': 'dpo'}
    """
    name = template.name if isinstance(template, Template) else get_template(template).name
    return {"kind": TASK, "template": name, **extra}


def task_template(task: Mapping[str, Any] | None, source: str = "the checkpoint") -> Template | None:
    """The template a task record names; ``None`` for a plain language model (no task record).
    A classifier is refused: it scores labels, it does not write text."""
    if task is None:
        return None
    kind = task.get("kind")
    if kind == TASK:
        return get_template(task.get("template", DEFAULT_TEMPLATE))
    if kind == "classify":
        raise ScratchLLMError(f"{source} is a classifier (labels {', '.join(map(str, task.get('labels', [])))}), "
                              "not a model that writes text: label texts with `scratchllm classify`")
    raise ScratchLLMError(f"{source} was tuned for the task {kind!r}, which has no prompt template")


def checkpoint_template(path: str | os.PathLike) -> Template | None:
    """The template a checkpoint (or a run's newest one) was tuned with; ``None`` for a plain language model."""
    from scratchllm.checkpoint import read_task

    return task_template(read_task(path), str(path))


class ResponseStream:
    """A response as it streams: ``push`` each decoded piece and show what it returns; text that
    could begin a stop string is held back until it is clear, and ``stopped`` turns true at one
    (the rest is dropped). ``finish`` returns what is still held.

    >>> stream = ResponseStream(get_template("alpaca"))
    >>> [stream.push(p) for p in ["Blue", ".\\n", "\\n### Instr", "uction:", " more"]]
    ['Blue', '.', '', '', '']
    >>> stream.stopped, stream.finish()
    (True, '')
    """

    def __init__(self, template: Template) -> None:
        self._stops = StopStrings(template.stop_strings)
        self.stopped = False

    def push(self, piece: str) -> str:
        """The part of the text so far that is certainly response, not yet returned."""
        if self.stopped:
            return ""
        text, self.stopped = self._stops.push(piece)
        return text

    def finish(self) -> str:
        """What was held back at the end (no stop string came)."""
        return "" if self.stopped else self._stops.flush()
