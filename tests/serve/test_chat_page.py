"""The chat page in a real browser: Debian's chromium driven by Playwright types a prompt and reads
the streamed answer; a screenshot is kept with the test's files."""

import json
import os
import shutil
from pathlib import Path

import pytest
from serve_helpers import alone, text_of

CHROMIUM = Path("/usr/bin/chromium")
PROMPT = "I had always thought Jack Gisburn"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): `apt-get install -y chromium` to run "
                    "the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def test_typing_a_prompt_streams_the_answer_with_token_boundaries(browser, server, model, tokenizer, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 640})
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
    assert page.input_value("#mode") == "complete"  # a base model: the page continues the text
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "24")
    page.fill("#prompt", PROMPT)
    page.press("#prompt", "Enter")
    stats = page.wait_for_selector(".message.assistant .stats:has-text('tokens/s')", timeout=30000)
    new = alone(model, tokenizer, PROMPT, 24, 0)
    answer = page.eval_on_selector(".message.assistant .body", "e => e.textContent")
    assert answer == PROMPT + text_of(tokenizer, new)
    assert stats.text_content().startswith(f"{len(new)} tokens · ")
    pieces = page.query_selector_all(".message.assistant .tok")
    assert "".join(p.text_content() for p in pieces) == text_of(tokenizer, new)
    first = tokenizer.decode_bytes([new[0]]).decode("utf-8", "replace")
    assert pieces[0].get_attribute("data-tip").startswith(f"{json.dumps(first, ensure_ascii=False)}  logprob -")
    page.check("#boundaries")
    pieces[2].hover()
    assert page.text_content("#tip") == pieces[2].get_attribute("data-tip")  # shown on hover
    page.screenshot(path=tmp_path / "chat-page.png")
    if os.environ.get("SCRATCHLLM_DOCS_IMAGES"):  # refresh the picture in docs/serving.md
        shutil.copy(tmp_path / "chat-page.png", Path(os.environ["SCRATCHLLM_DOCS_IMAGES"]) / "serve-chat-page.png")
    assert (tmp_path / "chat-page.png").stat().st_size > 10_000
    page.close()
