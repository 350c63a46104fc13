"""Scoring answers with a judge model, as the book does with Llama 3 through Ollama, here through
any OpenAI-compatible chat endpoint (Ollama's own ``http://localhost:11434/v1``, vLLM, llama.cpp's
server, a hosted API).

Each answer gets the book's prompt (its ``generate_model_scores``), word for word, with the
record's prompt as the book's ``format_input`` writes it (the alpaca template's text without the
response header), and the judge's reply must be an integer from 0 to 100; a reply that is not
is counted, not scored (the book prints it and goes on). Requests ask for temperature 0 and seed
123, the book's settings. ``OPENAI_API_KEY``, when set, is sent as the bearer token.

>>> print(judge_prompt({"instruction": "Add 2 and 3.", "input": "", "output": "5"}, "5."))
Given the input `Below is an instruction that describes a task. Write a response that appropriately completes \
the request.
<BLANKLINE>
### Instruction:
Add 2 and 3.` and correct output `5`, score the model response `5.` on a scale from 0 to 100, where 100 is the \
best score. Respond with the integer number only.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.templates import as_conversation, get_template


def book_input(record: Mapping[str, Any]) -> str:
    """A record's prompt as the book's ``format_input`` writes it (messages: in the alpaca template)."""
    conversation = as_conversation(record).to_prompt()
    alpaca = get_template("alpaca")
    return alpaca.render(conversation).removesuffix(f"\n\n{alpaca.response_header}\n")


def reference_answer(record: Mapping[str, Any]) -> str:
    """The record's correct output: ``output``, or the last assistant message."""
    response = as_conversation(record).exchanges[-1].response
    if response is None:
        raise ScratchLLMError("the record has no correct output to judge an answer against")
    return response


def judge_prompt(record: Mapping[str, Any], answer: str) -> str:
    """The book's scoring prompt for ``answer`` to ``record``."""
    return (f"Given the input `{book_input(record)}` "
            f"and correct output `{reference_answer(record)}`, "
            f"score the model response `{answer}`"
            f" on a scale from 0 to 100, where 100 is the best score. "
            f"Respond with the integer number only.")


def ask(url: str, model: str, prompt: str, timeout: float = 120.0) -> str:
    """The judge's reply to one user message, through ``POST {url}/chat/completions``."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "seed": 123}
    request = urllib.request.Request(f"{url.rstrip('/')}/chat/completions", data=json.dumps(body).encode("utf-8"),
                                     method="POST", headers={"Content-Type": "application/json"})
    if os.environ.get("OPENAI_API_KEY"):
        request.add_header("Authorization", f"Bearer {os.environ['OPENAI_API_KEY']}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        raise ScratchLLMError(f"the judge at {url} answered {err.code} {err.reason}; check --judge-url (the "
                              "OpenAI-compatible base, e.g. http://localhost:11434/v1) and --judge-model") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise ScratchLLMError(f"cannot reach the judge at {url} ({getattr(err, 'reason', err)}); start it, or "
                              "fix --judge-url") from None
    except json.JSONDecodeError:
        raise ScratchLLMError(f"the judge at {url} did not answer JSON: is it an OpenAI-compatible endpoint?") from None
    try:
        return str(reply["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        raise ScratchLLMError(f"the judge at {url} answered without choices[0].message.content: is it an "
                              "OpenAI-compatible chat endpoint?") from None


@dataclass
class JudgeResult:
    """The judge's scores (None where its reply was not an integer from 0 to 100)."""

    model: str
    scores: list[int | None]
    unparsed: list[str] = field(default_factory=list)  # the replies that were not scores

    @property
    def mean(self) -> float | None:
        valid = [s for s in self.scores if s is not None]
        return sum(valid) / len(valid) if valid else None

    @property
    def scored(self) -> int:
        return sum(s is not None for s in self.scores)


def parse_score(reply: str) -> int | None:
    """An integer from 0 to 100, or None.

    >>> parse_score(" 85\\n"), parse_score("85/100"), parse_score("101")
    (85, None, None)
    """
    try:
        score = int(reply.strip())
    except ValueError:
        return None
    return score if 0 <= score <= 100 else None


def judge_responses(records: Sequence[Mapping[str, Any]], url: str, model: str, key: str = "model_response",
                    progress: bool = True) -> JudgeResult:
    """Score each record's ``key`` answer against its correct output."""
    result = JudgeResult(model, [])
    for record in tqdm(records, desc="judge", unit="answer", disable=not progress):
        reply = ask(url, model, judge_prompt(record, str(record.get(key, ""))))
        score = parse_score(reply)
        result.scores.append(score)
        if score is None:
            result.unparsed.append(reply)
    return result
