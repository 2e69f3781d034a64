"""Chatting: scripts/chat.py driven through stdin, and the web demo (scripts/chat_web.py) driven
through its HTTP API with Gradio's own client, each answer a scripted two-turn conversation with
the tokens of greedy generation on the same formatted prompt (the conversation so far rendered
with the chat template's generation prompt). The model is transformers' awkward one, whose peaked
logits make greedy choices clear."""

import io
import json
import runpy

import pytest
import torch
from helpers import REPO_ROOT

from tinytitan.errors import UserError
from tinytitan.generation import generate
from tinytitan.model_files import load_model, require_tokenizer

chat_templates = pytest.importorskip("tinytitan.chat_templates")  # the finetuning work's templates
pytest.importorskip("transformers")

from tinytitan.chat import choose_template, prompt_ids  # noqa: E402  (needs the templates)

SYSTEM = "You answer briefly."
QUESTIONS = ["What is a list?", "And a tuple, née ü?"]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def loaded(roomy_folder):
    model, spec = load_model(roomy_folder, "cpu", torch.float32)
    return model, spec, require_tokenizer(spec, roomy_folder)


def greedy_answers(model, tokenizer, template, system=SYSTEM) -> list[str]:
    """Each turn's answer by greedy generate() on the conversation so far, formatted."""
    messages, answers = [{"role": "system", "content": system}], []
    for question in QUESTIONS:
        messages.append({"role": "user", "content": question})
        new = generate(model, prompt_ids(tokenizer, messages, template), NEW_TOKENS, eos_id=tokenizer.eos_id)
        answers.append(tokenizer.decode(new[:-1] if new[-1] == tokenizer.eos_id else new))
        messages.append({"role": "assistant", "content": answers[-1]})
    assert all(len(answer) > 3 for answer in answers)
    return answers


@pytest.mark.parametrize("template", ["tinyllama", None])
def test_chat_script_through_stdin_answers_as_greedy_generation(roomy_folder, loaded, template, monkeypatch, capsys):
    chat = runpy.run_path(str(REPO_ROOT / "scripts/chat.py"), run_name="chat")
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(QUESTIONS) + "\n"))
    chat["main"](
        [str(roomy_folder), "--temperature", "0", "--max-new-tokens", str(NEW_TOKENS), "--system", SYSTEM]
        + ["--template", template or "none"]
    )
    out = capsys.readouterr()
    model, _, tokenizer = loaded
    assert out.out == "".join(answer + "\n" for answer in greedy_answers(model, tokenizer, template))
    assert f"chat template: {template or 'none'}" in out.err


def test_the_web_demo_answers_a_two_turn_conversation_through_its_api(loaded):
    pytest.importorskip("gradio")
    from gradio_client import Client

    model, _, tokenizer = loaded
    web = runpy.run_path(str(REPO_ROOT / "scripts/chat_web.py"), run_name="chat_web")
    options = web["parse_args"](["unused", "--system", SYSTEM])
    demo = web["build_demo"](model, tokenizer, "tinyllama", options)
    demo.launch(server_name=options.host, server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        assert demo.local_url.startswith("http://127.0.0.1:")
        client = Client(demo.local_url, verbose=False)
        history, answers = [], []
        for question in QUESTIONS:
            answers.append(client.predict(question, history, SYSTEM, 0.0, 1.0, NEW_TOKENS, 0, api_name="/answer"))
            history += [{"role": "user", "content": question}, {"role": "assistant", "content": answers[-1]}]
        first_turn = client.predict(QUESTIONS[0], SYSTEM, 0.0, 1.0, NEW_TOKENS, 0, api_name="/chat")
    finally:
        demo.close()
    assert answers == greedy_answers(model, tokenizer, "tinyllama")
    assert first_turn == answers[0]  # the page's own chat endpoint, streamed, gives the same


def test_the_template_is_the_exported_one_or_named_or_none(roomy_folder, loaded, tmp_path):
    _, spec, _ = loaded
    assert choose_template("auto", roomy_folder, spec) is None  # a base model: plain continuation
    assert choose_template("none", roomy_folder, spec) is None
    assert choose_template("tinyllama", roomy_folder, spec) == "tinyllama"
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": chat_templates.TEMPLATES["tinyllama"]})
    )
    assert choose_template("auto", tmp_path, spec) == "tinyllama"
    with pytest.raises(UserError, match="--template 'zephyr': expected auto, none or one of tinyllama"):
        choose_template("zephyr", roomy_folder, spec)
