#!/usr/bin/env python3
"""A web chat with a model, in the browser: streaming answers, multi-turn history, sampling settings.

    pip install 'tinytitan[demo]'          # Gradio
    python scripts/chat_web.py outputs/debug_sft/checkpoints/step-300
    python scripts/chat_web.py hf/tinyllama-chat --port 7860      # then open http://127.0.0.1:7860

The page is served on 127.0.0.1 (this machine only) unless --host says otherwise. Each answer is
the model's continuation of the whole conversation (the system prompt, then the turns) rendered
with its chat template, up to the end of the turn, as scripts/chat.py does it (the template and
plain continuation for a base model: see there). Sampling settings are on the page; temperature 0
is greedy. Gradio's HTTP API serves one turn at /chat and, with the history passed in, any turn
of a conversation at /answer (gradio_client.Client(url).predict(message, history, ...,
api_name="/answer")).
"""

import argparse

import torch

from tinytitan.chat import add_chat_options, choose_template, stream_reply
from tinytitan.errors import UserError, run_entry_point
from tinytitan.generation import Sampling
from tinytitan.inference_options import add_model_options, add_sampling_options, load_from, sampling_from


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    add_sampling_options(parser, temperature=0.7, top_p=0.9, max_new_tokens=256)
    add_chat_options(parser, "the system prompt the page starts with")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    return parser.parse_args(argv)


def text_of(content) -> str:
    """A message's text as Gradio hands history back: a string, or a list of typed parts."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in parts)


def build_demo(model, tokenizer, template: str | None, options: argparse.Namespace):
    """The Gradio page (not launched)."""
    import gradio as gr

    def respond(message, history, system, temperature, top_p, max_new_tokens, seed):
        turns = [{"role": turn["role"], "content": text_of(turn["content"])} for turn in history]
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + turns
        messages.append({"role": "user", "content": text_of(message)})
        try:
            sampling = Sampling(float(temperature), float(top_p))
            answer = ""
            generator = torch.Generator().manual_seed(int(seed))
            for piece in stream_reply(model, tokenizer, messages, template, sampling, int(max_new_tokens), generator):
                answer += piece
                yield answer
        except UserError as error:
            raise gr.Error(str(error)) from None

    settings = [
        gr.Textbox(options.system, label="System prompt"),
        gr.Slider(0.0, 2.0, options.temperature, step=0.05, label="Temperature (0: greedy)"),
        gr.Slider(0.05, 1.0, options.top_p, step=0.05, label="Top-p"),
        gr.Slider(1, model.args.max_seq_len, options.max_new_tokens, step=1, label="Max new tokens"),
        gr.Number(options.seed, precision=0, label="Seed"),
    ]

    def answer(
        message: str,
        history: list[dict],
        system: str = "",
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        seed: int = 0,
    ) -> str:
        """The whole answer to `message` after the conversation `history` ([{"role", "content"}, ...])."""
        text = ""
        for partial in respond(message, history, system, temperature, top_p, max_new_tokens, seed):
            text = partial  # each is the answer so far
        return text

    with gr.Blocks(title="tinytitan chat") as demo:
        gr.ChatInterface(
            respond,
            additional_inputs=settings,
            title="tinytitan chat",
            description=f"{options.model} · chat template: {template or 'none (plain continuation)'}",
            concurrency_limit=1,  # one answer at a time: the model is shared
            api_name="chat",
        )
        # The page's chat keeps its history in the browser; this endpoint takes it as an argument,
        # so a program can hold a conversation through the API.
        gr.api(answer, api_name="answer", concurrency_limit=1)
    return demo


def main(argv: list[str]) -> None:
    options = parse_args(argv)
    sampling_from(options)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web demo needs Gradio: pip install 'tinytitan[demo]' (or pip install gradio)") from None
    model, spec, tokenizer = load_from(options)
    template = choose_template(options.template, options.model, spec)
    build_demo(model, tokenizer, template, options).launch(server_name=options.host, server_port=options.port)


if __name__ == "__main__":
    run_entry_point(main)
