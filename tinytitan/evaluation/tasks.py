"""The tasks: for each, how one published row becomes the requests lm-evaluation-harness scores.

Each definition follows the task YAML (and utils.py) of lm-evaluation-harness 0.4 named beside it,
zero-shot: the same prompt, the same choices, the same target delimiter (" " before each choice of
a multiple-choice task, none for LAMBADA's loglikelihood) and the same pre-processing. A request is
a (context, continuation) pair whose log-likelihood is the sum over the continuation's tokens
(scoring.py). `acc` takes the choice of the highest sum, `acc_norm` the highest sum per character
of the choice text (lm-eval's `completion_len`, without the delimiter).
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

from tinytitan.errors import UserError
from tinytitan.evaluation.rows import Row, read_rows

BUILTIN = "builtin"  # the task made from the built-in corpus (builtin_task.py); it has no file
DELIMITER = " "  # lm-eval's default target_delimiter


@dataclass(frozen=True)
class Item:
    requests: tuple[tuple[str, str], ...]  # (context, continuation) per choice; one for LAMBADA
    gold: int  # the true choice
    choices: tuple[str, ...]  # lm-eval's doc_to_choice: their lengths in characters divide for acc_norm


@dataclass(frozen=True)
class Task:
    name: str
    follows: str  # the lm-eval task file this definition follows
    metrics: tuple[str, ...]
    item: Callable[[Row], Item] | None  # None: the built-in task, which has no rows

    @property
    def headline(self) -> str | None:
        """The number TinyLlama's commonsense table reports: acc_norm where the task defines it, else
        acc; None for LAMBADA, which is no multiple-choice task and not in that average."""
        if "perplexity" in self.metrics:
            return None
        return "acc_norm" if "acc_norm" in self.metrics else "acc"


def choose(context: str, choices: list[str], gold: int) -> Item:
    """A multiple-choice item: the context continued by each choice after the delimiter."""
    return Item(tuple((context, DELIMITER + choice) for choice in choices), gold, tuple(choices))


def hellaswag_text(text: str) -> str:
    """hellaswag/utils.py `preprocess`: the brackets are WikiHow artifacts."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag(row: Row) -> Item:
    """tasks/hellaswag/hellaswag.yaml with utils.process_docs (Rowan/hellaswag rows)."""
    endings = row.texts("endings")
    context = row.text("ctx_a") + " " + row.text("ctx_b").capitalize()
    query = hellaswag_text(row.text("activity_label") + ": " + context)
    return choose(query, [hellaswag_text(ending) for ending in endings], row.index("label", len(endings)))


def piqa(row: Row) -> Item:
    """tasks/piqa/piqa.yaml (baber/piqa rows: goal, sol1, sol2, label)."""
    return choose(f"Question: {row.text('goal')}\nAnswer:", [row.text("sol1"), row.text("sol2")], row.index("label", 2))


def arc(row: Row) -> Item:
    """tasks/arc/arc_easy.yaml, and arc_challenge.yaml which includes it (allenai/ai2_arc rows)."""
    choices = row.record("choices")
    texts, labels = choices.texts("text"), choices.texts("label")
    if len(texts) != len(labels):
        raise UserError(f"{row.where}: field 'choices': expected as many labels as texts")
    return choose(f"Question: {row.text('question')}\nAnswer:", texts, row.one_of("answerKey", labels))


def winogrande(row: Row) -> Item:
    """tasks/winogrande/default.yaml with preprocess_winogrande.py (allenai/winogrande rows): each
    option fills the blank in the context, and the rest of the sentence is the one continuation."""
    sentence = row.text("sentence")
    if "_" not in sentence:
        raise UserError(f"{row.where}: field 'sentence': expected a blank '_' for the options")
    blank = sentence.index("_")
    contexts = [sentence[:blank] + row.text("option1"), sentence[:blank] + row.text("option2")]
    rest = DELIMITER + sentence[blank + 1 :].strip()
    return Item(tuple((context, rest) for context in contexts), row.index("answer", 2, first=1), tuple(contexts))


def boolq(row: Row) -> Item:
    """tasks/super_glue/boolq/default.yaml (aps/super_glue boolq rows: passage, question, label)."""
    prompt = f"{row.text('passage')}\nQuestion: {row.text('question')}?\nAnswer:"
    return choose(prompt, ["no", "yes"], row.index("label", 2))


def openbookqa(row: Row) -> Item:
    """tasks/openbookqa/openbookqa.yaml (allenai/openbookqa rows, config main)."""
    choices = row.record("choices")
    texts, labels, key = choices.texts("text"), choices.texts("label"), row.text("answerKey").lstrip()
    if key not in labels or len(texts) != len(labels):
        raise row.refuse("answerKey", f"one of the choices' labels {', '.join(map(repr, labels))}")
    return choose(row.text("question_stem"), texts, labels.index(key))


def lambada(row: Row) -> Item:
    """tasks/lambada/lambada_openai.yaml (EleutherAI/lambada_openai rows): the last word after the
    text before it; split on single spaces, as the YAML's template does."""
    words = row.text("text").split(" ")
    if len(words) < 2:
        raise UserError(f"{row.where}: field 'text': expected at least two words")
    return Item(((" ".join(words[:-1]), " " + words[-1]),), 0, (words[-1],))


MULTIPLE_CHOICE = ("acc", "acc_norm")
TASKS = {
    task.name: task
    for task in (
        Task("hellaswag", "hellaswag/hellaswag.yaml", MULTIPLE_CHOICE, hellaswag),
        Task("piqa", "piqa/piqa.yaml", MULTIPLE_CHOICE, piqa),
        Task("arc_easy", "arc/arc_easy.yaml", MULTIPLE_CHOICE, arc),
        Task("arc_challenge", "arc/arc_challenge.yaml", MULTIPLE_CHOICE, arc),
        Task("winogrande", "winogrande/default.yaml", ("acc",), winogrande),
        Task("boolq", "super_glue/boolq/default.yaml", ("acc",), boolq),
        Task("openbookqa", "openbookqa/openbookqa.yaml", MULTIPLE_CHOICE, openbookqa),
        Task("lambada_openai", "lambada/lambada_openai.yaml", ("perplexity", "acc"), lambada),
        Task(BUILTIN, "none: made from the built-in corpus (builtin_task.py)", MULTIPLE_CHOICE, None),
    )
}


def task_named(name: str, what: str = "task") -> Task:
    if name not in TASKS:
        raise UserError(f"{what} {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]


def read_items(task: Task, path: str, limit: int = 0) -> list[Item]:
    """The task's items from its file (the first `limit`, when above 0)."""
    return [task.item(row) for row in read_rows(path, limit)]
