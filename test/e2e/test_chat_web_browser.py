"""The web chat in a real browser (headless Chromium driven by Playwright): a question typed into the
page gets the greedy answer streamed into it, and the page is photographed. Skipped where Playwright
or Chromium is absent (CI); TINYTITAN_SCREENSHOT=docs/chat_web.png saves the picture for the docs."""

import os
import runpy
import shutil

import pytest
import torch
from helpers import REPO_ROOT

from tinytitan.generation import generate
from tinytitan.model_files import load_model, require_tokenizer

pytest.importorskip("tinytitan.chat_templates")
pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium")]

QUESTION = "What is a list?"


def test_a_question_typed_into_the_page_gets_the_greedy_answer(roomy_folder, tmp_path):
    from tinytitan.chat import prompt_ids

    model, spec = load_model(roomy_folder, "cpu", torch.float32)
    tokenizer = require_tokenizer(spec, roomy_folder)
    web = runpy.run_path(str(REPO_ROOT / "scripts/chat_web.py"), run_name="chat_web")
    options = web["parse_args"]([str(roomy_folder), "--temperature", "0", "--max-new-tokens", "24"])
    messages = [{"role": "user", "content": QUESTION}]
    new = generate(model, prompt_ids(tokenizer, messages, "tinyllama"), 24, eos_id=tokenizer.eos_id)
    answer = tokenizer.decode([token for token in new if token != tokenizer.eos_id])

    demo = web["build_demo"](model, tokenizer, "tinyllama", options)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(demo.local_url)
            box = page.get_by_role("textbox").first
            box.fill(QUESTION)
            box.press("Enter")
            bot = page.locator('[data-testid="bot"]').last
            bot.wait_for(timeout=60_000)
            # The answer streams in; the page shows it rendered as markdown, so compare it without spaces.
            expected = "".join(answer.split())
            for _ in range(120):
                if "".join(bot.inner_text().split()) == expected:
                    break
                page.wait_for_timeout(500)
            assert "".join(bot.inner_text().split()) == expected
            page.screenshot(path=os.environ.get("TINYTITAN_SCREENSHOT") or str(tmp_path / "chat_web.png"))
            assert QUESTION in page.locator("body").inner_text()
            browser.close()
    finally:
        demo.close()
