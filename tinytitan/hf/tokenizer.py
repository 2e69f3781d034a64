"""Hugging Face tokenizer files for a Llama-style sentencepiece tokenizer, giving sentencepiece's ids.

Given only a `tokenizer.model`, transformers 5 builds its own BPE from it, and that BPE differs from
sentencepiece on whitespace:
- it ranks the merges by piece id, where sentencepiece merges the pair whose merged piece has the
  highest score. Llama 2's whitespace pieces ("▁▁", "▁▁▁", ...) have low ids but the lowest score
  (-1e9), so "\\n    def" becomes "▁▁▁▁" "def" rather than sentencepiece's "▁▁▁" "▁def";
- its Llama tokenizer adds the dummy-prefix "▁" only when the text does not already start with a
  space, so "  x" loses one space.
So we also write a `tokenizer.json` built the way sentencepiece encodes, and name the generic
`PreTrainedTokenizerFast` class, which loads that file as it is (LlamaTokenizer would rebuild it).
The merges are ranked by score; among equal scores (the whitespace runs) the pair with the longer
left part comes first, so a run grows from its left end, as sentencepiece's leftmost-first rule does.

`<s>`, `</s>` and `<unk>` typed in the text are plain text to sentencepiece, so the tokenizer is
saved with `split_special_tokens` (code such as the regex `(?P<s>...)` keeps its ids); the ids of
bos/eos are still added and decoded as special tokens. A tokenizer exported with a chat template is
the exception: the template writes each turn's end as the text `</s>`, which must be the token for
`apply_chat_template` to give the ids the model was finetuned on, so there that text is the token
(as in every Hugging Face chat model, TinyLlama-Chat's included).

Llama 2 has no padding piece, yet batched encoding (`padding=True`) and pipelines with batch_size > 1
need one. We pad with the unknown piece `<unk>`, on the left: the attention mask hides the pads, a
byte-fallback tokenizer never produces `<unk>` from text, and unlike padding with `</s>` (the other
common choice, e.g. TinyLlama's chat model), a fine-tuning collator that masks the labels of pad ids
does not also mask the real end of each document, and generate() can tell pads from an ended
sequence. Left padding is what batched `generate` needs (each row's last token is its own).
"""

import json
import shutil
from pathlib import Path

from tinytitan.chat_templates import template_text
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError

# sentencepiece's ModelProto.SentencePiece.Type values.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
_BPE = 2  # TrainerSpec.ModelType
SPACE = "▁"


def _read_proto(model_path: Path):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as error:  # the protobuf package is missing
        raise UserError(f"reading {model_path} needs the protobuf package ({error}): pip install protobuf") from None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_path.read_bytes())
    return proto


def _check_supported(proto, model_path: Path) -> None:
    """Refuse what this conversion does not reproduce exactly, rather than export a tokenizer that
    gives other ids than the model was trained on."""
    normalizer, trainer = proto.normalizer_spec, proto.trainer_spec
    problems = []
    if trainer.model_type != _BPE:
        problems.append("a BPE model")
    if normalizer.precompiled_charsmap or normalizer.name not in ("identity", ""):
        problems.append(f"the identity normalization (it has {normalizer.name!r})")
    if normalizer.remove_extra_whitespaces:
        problems.append("whitespace kept as is (it has remove_extra_whitespaces)")
    if trainer.treat_whitespace_as_suffix:
        problems.append("whitespace as a prefix (it has treat_whitespace_as_suffix)")
    if problems:
        raise UserError(
            f"tokenizer {model_path}: expected a Llama-style sentencepiece model with " + ", ".join(problems)
        )


def _merges(proto) -> list[tuple[str, str]]:
    """Every split of every normal piece into two pieces, in the order sentencepiece would merge them."""
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    ranked = []
    for index, piece in enumerate(proto.pieces):
        if piece.type != _NORMAL:
            continue
        for cut in range(1, len(piece.piece)):
            left, right = piece.piece[:cut], piece.piece[cut:]
            if left in vocab and right in vocab:
                ranked.append(((-piece.score, -len(left), index), (left, right)))
    ranked.sort()
    return [pair for _, pair in ranked]


def _special_tokens(proto) -> dict[str, str]:
    pieces, trainer = proto.pieces, proto.trainer_spec
    return {
        "bos_token": pieces[trainer.bos_id].piece,
        "eos_token": pieces[trainer.eos_id].piece,
        "unk_token": pieces[trainer.unk_id].piece,
        "pad_token": pieces[trainer.unk_id].piece,  # Llama 2 has no padding piece (see the top)
    }


def pad_id(model_path: str | Path) -> int:
    """The id the exported tokenizer pads with, for generation_config.json."""
    return _read_proto(Path(model_path).expanduser()).trainer_spec.unk_id


def build_tokenizer_json(proto) -> str:
    """The `tokenizers` serialization of a sentencepiece model (a parsed ModelProto)."""
    from tokenizers import AddedToken, decoders, normalizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE

    pieces = proto.pieces
    tokenizer = HFTokenizer(
        BPE(
            vocab={piece.piece: index for index, piece in enumerate(pieces)},
            merges=_merges(proto),
            unk_token=_special_tokens(proto)["unk_token"],
            fuse_unk=True,
            byte_fallback=proto.trainer_spec.byte_fallback,
        )
    )
    # sentencepiece's text normalization with the identity rule: a dummy-prefix space, spaces as "▁".
    # No pre-tokenizer: no piece spans sentencepiece's word boundaries, so BPE over the whole text
    # makes the same merges.
    prefix = proto.normalizer_spec.add_dummy_prefix
    tokenizer.normalizer = normalizers.Sequence(
        ([normalizers.Prepend(SPACE)] if prefix else []) + [normalizers.Replace(" ", SPACE)]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if prefix else [])
    )
    bos = _special_tokens(proto)["bos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, proto.trainer_spec.bos_id)]
    )
    tokenizer.add_special_tokens(
        [
            AddedToken(piece.piece, normalized=False, special=True)
            for piece in pieces
            if piece.type in (_UNKNOWN, _CONTROL)
        ]
    )
    # sentencepiece matches user-defined pieces in the raw text before anything else; so do added tokens.
    tokenizer.add_tokens(
        [AddedToken(piece.piece, normalized=False, special=False) for piece in pieces if piece.type == _USER_DEFINED]
    )
    return tokenizer.to_str(pretty=True)


def write_hf_tokenizer(
    model_path: str | Path, folder: str | Path, max_length: int, chat_template: str = ""
) -> Tokenizer:
    """Write tokenizer.model, tokenizer.json, tokenizer_config.json and special_tokens_map.json into
    `folder`, for `AutoTokenizer.from_pretrained(folder)`, with the named chat template (see
    tinytitan/chat_templates.py) when one is given. Returns the tokenizer."""
    model_path, folder = Path(model_path).expanduser(), Path(folder)
    tokenizer = Tokenizer(model_path)  # checks it is a sentencepiece model with bos and eos
    proto = _read_proto(model_path)
    _check_supported(proto, model_path)
    try:
        tokenizer_json = build_tokenizer_json(proto)
    except ImportError as error:
        raise UserError(f"writing Hugging Face tokenizer files needs the tokenizers package ({error})") from None
    special = _special_tokens(proto)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # loads tokenizer.json as it is (see above)
        **special,
        "padding_side": "left",  # for batched generate (see the top)
        "add_bos_token": True,  # as training did: every document starts with <s>
        "add_eos_token": False,
        "split_special_tokens": not chat_template,  # a chat template's </s> must be the token (see the top)
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        # The model takes no token_type_ids: without this, transformers 4 returns them and
        # `model.generate(**tokenizer(text, return_tensors="pt"))` fails.
        "model_input_names": ["input_ids", "attention_mask"],
    }
    if chat_template:
        config["chat_template"] = template_text(chat_template)
    shutil.copyfile(model_path, folder / "tokenizer.model")
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return tokenizer
