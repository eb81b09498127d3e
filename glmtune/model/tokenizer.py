"""ChatGLM3's tokenizer, built natively from its SentencePiece model (no remote code).

The official `ChatGLMTokenizer` is remote code that breaks on transformers 5. Its behaviour is simple
to state: SentencePiece BPE (byte fallback, dummy prefix, identity normalisation), nine special
tokens appended after the 64,789 pieces, `[gMASK] sop` in front of every encoded text, pad = id 0.
We rebuild exactly that as a `tokenizers` fast tokenizer, so `save_pretrained` writes a plain
`tokenizer.json` that `AutoTokenizer.from_pretrained` reloads with no custom code.

All text is SentencePiece text, as in the official tokenizer: "people" is one piece, not
"p" + `eop` + "le", and a user who types "<|user|>" or "[gMASK]" does not inject a turn. Control
tokens enter only as ids, from the code that builds prompts (`chat_ids`, the post-processor).
`split_special_tokens=True` tells transformers exactly this, and it is saved with the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SentencePieceExtractor

from ..core.errors import ModelLoadError
from .sources import resolve_model_dir

SPECIAL_TOKENS = (
    "[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
)
PAD_ID, EOS_ID = 0, 2


def build_tokenizer(sp_model: str | Path) -> PreTrainedTokenizerFast:
    """Build the ChatGLM3 fast tokenizer from a SentencePiece `tokenizer.model` file."""
    vocab_and_merges = SentencePieceExtractor(str(sp_model)).extract(BPE)
    vocab, merges = vocab_and_merges["vocab"], vocab_and_merges["merges"]
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    # SentencePiece's dummy prefix and its whitespace-as-"▁" rule, nothing else (identity normalisation).
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    ids = {tok: backend.token_to_id(tok) for tok in SPECIAL_TOKENS}
    if ids["[MASK]"] != len(vocab):
        raise ValueError(f"{sp_model}: special tokens did not land right after the {len(vocab)} pieces")
    backend.post_processor = processors.TemplateProcessing(
        single="[gMASK] sop $A", pair="[gMASK] sop $A $B",
        special_tokens=[("[gMASK]", ids["[gMASK]"]), ("sop", ids["sop"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>", eos_token="</s>", pad_token="<unk>",
        padding_side="left",  # generation appends on the right, so prompts are aligned on the right
        additional_special_tokens=list(SPECIAL_TOKENS),
        model_max_length=_model_max_length(Path(sp_model).parent),
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
    )


def _model_max_length(folder: Path) -> int:
    config = folder / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text(encoding="utf-8")).get("seq_length", 8192))
    return 8192


def tokenizer_folder(name_or_path: str | Path) -> Path:
    """The folder holding the tokenizer's files; ModelLoadError, saying what to do, if there are none."""
    folder = resolve_model_dir(name_or_path, weights=False)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        raise ModelLoadError(
            f"{folder}: no tokenizer.model (ChatGLM3's SentencePiece file) and no tokenizer.json. "
            "Point --model at the full ChatGLM3 checkpoint folder, or copy tokenizer.model into it."
        )
    return folder


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerFast:
    """Load ChatGLM3's tokenizer from an official folder (`tokenizer.model`), a hub id, `tiny`,
    or a folder this function saved before (`tokenizer.json`)."""
    folder = tokenizer_folder(name_or_path)
    if (folder / "tokenizer.json").is_file():
        try:
            # Run folders written before text stopped being matched against control tokens lack the flag.
            return AutoTokenizer.from_pretrained(str(folder), split_special_tokens=True)
        except (ValueError, TypeError, KeyError, AttributeError) as err:  # truncated or hand-edited JSON
            raise ModelLoadError(f"{folder}: tokenizer.json or tokenizer_config.json is damaged ({type(err).__name__}: "
                                 f"{err}); copy the folder again, or train again into a new --output-dir") from None
    return build_tokenizer(folder / "tokenizer.model")


def stop_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """ChatGLM3 ends a reply with eos, or by starting the next user or observation turn."""
    return [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(["<|user|>", "<|observation|>"])]
