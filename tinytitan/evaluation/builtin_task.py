"""The built-in task: made offline from the built-in corpus's validation prose (Python's own
documentation topics that training never sees), so that the debug run shows an accuracy with no
download. Each item is a passage and four continuations of the same number of words: its own, and
three from other documents; chance is 1/4. Scored as a HellaSwag item is (tasks.choose)."""

import random

from tinytitan.data.builtin_corpus import validation_prose_documents
from tinytitan.evaluation.tasks import Item, choose

CONTEXT_WORDS = 24
CONTINUATION_WORDS = 8
CHOICES = 4
SEED = 0  # the items are the same in every run


def passages(document: str) -> list[tuple[str, str]]:
    """(context, continuation) of windows of the document's words, one every CONTINUATION_WORDS words:
    the continuations do not overlap, so each is the true one of one item only."""
    words, size = document.split(), CONTEXT_WORDS + CONTINUATION_WORDS
    return [
        (" ".join(words[start : start + CONTEXT_WORDS]), " ".join(words[start + CONTEXT_WORDS : start + size]))
        for start in range(0, len(words) - size + 1, CONTINUATION_WORDS)
    ]


def builtin_items(limit: int = 0) -> list[Item]:
    """The items, in a fixed order (the first `limit`, when above 0)."""
    rng = random.Random(SEED)
    documents = [passages(document) for document in validation_prose_documents()]
    items = []
    for index, windows in enumerate(documents):
        others = [continuation for other, w in enumerate(documents) if other != index for _, continuation in w]
        for context, continuation in windows:
            choices = rng.sample(others, CHOICES - 1)
            gold = rng.randrange(CHOICES)
            choices.insert(gold, continuation)
            items.append(choose(context, choices, gold))
    return items[:limit] if limit else items
