"""A tiny ChatGLM3 checkpoint in the ORIGINAL layout, for the CPU demo and the tests.

It is written exactly as THUDM ships ChatGLM3-6B — `config.json` with `model_type: chatglm`,
`transformer.encoder.layers.N.self_attention.query_key_value` and friends in safetensors, and a
SentencePiece BPE `tokenizer.model` — so loading it runs the same conversion path as the real
model. The tokenizer is trained here on the project's own dataset; weights are random (seeded).
Everything is created on first use and cached under `$GLMTUNE_CACHE` (default `~/.cache/glmtune`).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..core.errors import ModelLoadError
from ..core.files import cache_root

# A wheel carries the dataset in resources/; a source checkout has it at the repository root.
_PACKAGED = Path(__file__).resolve().parents[1] / "resources" / "financial_data.txt"
DEFAULT_CORPUS = _PACKAGED if _PACKAGED.is_file() else Path(__file__).resolve().parents[2] / "financial_data.txt"
# Bump when the generator changes, so stale caches are not reused.
TINY_VERSION = 1

# Every matrix dim is a multiple of 64: bitsandbytes' CPU NF4 kernels need it.
TINY_SHAPE = dict(
    hidden_size=128, num_attention_heads=4, kv_channels=32, multi_query_group_num=2,
    ffn_hidden_size=256, num_layers=2, seq_length=2048,
)
TINY_SP_VOCAB = 3000


def original_config(sp_vocab: int, **shape) -> dict:
    """A ChatGLM3 `config.json` (original field names) for a model with `sp_vocab` pieces."""
    padded_vocab = -(-(sp_vocab + 9) // 64) * 64  # 9 special tokens, padded like the 6B's 65,024
    return {
        "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "add_bias_linear": False, "add_qkv_bias": True, "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0, "hidden_dropout": 0.0, "layernorm_epsilon": 1e-5,
        "multi_query_attention": True, "original_rope": True, "post_layer_norm": True, "rmsnorm": True,
        "padded_vocab_size": padded_vocab, "tie_word_embeddings": False,
        "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float32",
        **shape,
    }


def random_original_weights(config: dict, seed: int = 0, dtype=torch.float32,
                            device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random weights with ChatGLM3's original tensor names and shapes (on `device`: a GPU draws
    the 6B model's 6.2 billion values in seconds)."""
    g = torch.Generator(device).manual_seed(seed)
    h, ffn, vocab = config["hidden_size"], config["ffn_hidden_size"], config["padded_vocab_size"]
    qkv_rows = (config["num_attention_heads"] + 2 * config["multi_query_group_num"]) * config["kv_channels"]
    q_dim = config["num_attention_heads"] * config["kv_channels"]

    def normal(*shape):
        return (torch.randn(*shape, generator=g, device=device, dtype=dtype) * 0.02)

    def ones(n):  # norms near 1 but not exactly, so a swapped norm weight shows in the logits
        return (1.0 + 0.1 * torch.randn(n, generator=g, device=device)).to(dtype)

    rot_dim = config["kv_channels"] // 2
    base = 10000.0 * config.get("rope_ratio", 1)
    weights = {
        "transformer.embedding.word_embeddings.weight": normal(vocab, h),
        "transformer.rotary_pos_emb.inv_freq": 1.0 / base ** (torch.arange(0, rot_dim, 2, device=device) / rot_dim),
        "transformer.encoder.final_layernorm.weight": ones(h),
        "transformer.output_layer.weight": normal(vocab, h),
    }
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        weights |= {
            p + "input_layernorm.weight": ones(h),
            p + "self_attention.query_key_value.weight": normal(qkv_rows, h),
            p + "self_attention.query_key_value.bias": normal(qkv_rows),
            p + "self_attention.dense.weight": normal(h, q_dim),
            p + "post_attention_layernorm.weight": ones(h),
            p + "mlp.dense_h_to_4h.weight": normal(2 * ffn, h),
            p + "mlp.dense_4h_to_h.weight": normal(h, ffn),
        }
    return weights


def train_sentencepiece(corpus: Path, out_file: Path, vocab_size: int = TINY_SP_VOCAB) -> None:
    """Train a SentencePiece BPE model with ChatGLM3's settings (byte fallback, dummy prefix,
    identity normalisation, unk/bos/eos = 0/1/2)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.read_text(encoding="utf-8").splitlines()),
        model_writer=model, model_type="bpe", vocab_size=vocab_size,
        character_coverage=0.9995, byte_fallback=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )
    out_file.write_bytes(model.getvalue())


def sentencepiece_size(model_file: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(model_file)).vocab_size()


def write_original_checkpoint(folder: Path, config: dict, weights: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def ensure_tiny(corpus: Path = DEFAULT_CORPUS) -> Path:
    """Return the cached tiny checkpoint folder, creating it first if needed."""
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus}: the tiny model's tokenizer is trained on this file, and it is missing")
    key = hashlib.sha256(corpus.read_bytes() + json.dumps([TINY_VERSION, TINY_SHAPE]).encode()).hexdigest()[:12]
    folder = cache_root() / f"tiny-chatglm3-{key}"
    if (folder / "model.safetensors").is_file():
        return folder
    try:
        cache_root().mkdir(parents=True, exist_ok=True)
        # Build in a scratch folder and rename, so an interrupted build never leaves a half checkpoint.
        scratch = Path(tempfile.mkdtemp(prefix="tiny-", dir=cache_root()))
        try:
            train_sentencepiece(corpus, scratch / "tokenizer.model")
            config = original_config(sentencepiece_size(scratch / "tokenizer.model"), **TINY_SHAPE)
            write_original_checkpoint(scratch, config, random_original_weights(config))
            try:
                scratch.rename(folder)
            except OSError:  # another process won the race; its copy is identical
                pass
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except OSError as err:
        raise ModelLoadError(f"{err.filename or cache_root()}: cannot write the tiny model's cache there "
                             f"({err.strerror or err}); set GLMTUNE_CACHE to a folder you can write to, e.g. "
                             "export GLMTUNE_CACHE=/tmp/glmtune-cache") from None
    return folder
