"""Load the official ChatGLM3 checkpoint into transformers' native `GlmForCausalLM`.

ChatGLM3 and GLM share one architecture; only names differ. We translate the config, and register
a checkpoint conversion mapping so transformers renames (and splits the fused qkv) tensor by tensor
while loading — NF4 included — with no converted copy on disk and no remote code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import BitsAndBytesConfig, GlmConfig, GlmForCausalLM
from transformers.conversion_mapping import (
    USER_REGISTERED_MAPPINGS,
    register_checkpoint_conversion_mapping,
)
from transformers.core_model_loading import Split, WeightConverter, WeightRenaming

from ..core import device
from ..core.config import DEFAULT_MODEL
from ..core.errors import ModelLoadError
from .placement import ON_DEVICE, CpuEmbedding, CpuHead, Placement
from .sources import resolve_model_dir

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")

# Original ChatGLM3 name -> native Glm name. Renamings chain, then one converter may fire.
CHATGLM_TO_GLM = [
    WeightRenaming(r"^transformer\.embedding\.word_embeddings", "model.embed_tokens"),
    WeightRenaming(r"^transformer\.encoder\.final_layernorm", "model.norm"),
    WeightRenaming(r"^transformer\.encoder\.layers", "model.layers"),
    WeightRenaming(r"^transformer\.output_layer", "lm_head"),
    WeightRenaming(r"\.self_attention\.dense\.", ".self_attn.o_proj."),
    WeightRenaming(r"\.mlp\.dense_h_to_4h\.", ".mlp.gate_up_proj."),
    WeightRenaming(r"\.mlp\.dense_4h_to_h\.", ".mlp.down_proj."),
    # Rows are [q heads | k groups | v groups]; Split sizes each piece from the target parameter.
    WeightConverter(
        "self_attention.query_key_value.weight",
        ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
        operations=[Split(dim=0)],
    ),
    WeightConverter(
        "self_attention.query_key_value.bias",
        ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"],
        operations=[Split(dim=0)],
    ),
]
# Tensors of the original checkpoint that the native model recomputes.
IGNORED_KEYS = [r"rotary_pos_emb\.inv_freq"]
SUPPORTED_VARIANT = {
    "rmsnorm": True, "post_layer_norm": True, "add_bias_linear": False,
    "apply_residual_connection_post_layernorm": False,
}


def register_chatglm_mapping() -> None:
    """Teach transformers to load original ChatGLM3 names into `GlmForCausalLM` (idempotent).
    The mapping does not touch native Glm names, so native checkpoints load as before."""
    if "glm" not in USER_REGISTERED_MAPPINGS:
        register_checkpoint_conversion_mapping("glm", CHATGLM_TO_GLM, overwrite=True)
    ignored = GlmForCausalLM._keys_to_ignore_on_load_unexpected or []
    if IGNORED_KEYS[0] not in ignored:
        GlmForCausalLM._keys_to_ignore_on_load_unexpected = [*ignored, *IGNORED_KEYS]


def read_config(folder: Path) -> GlmConfig:
    """The native `GlmConfig` for a ChatGLM3 (`model_type: chatglm`) or Glm folder."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder}: no config.json. Is this the ChatGLM3 checkpoint folder?")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ModelLoadError(f"{config_file}: not valid JSON ({err}); download the checkpoint's config.json again") from None
    model_type = raw.get("model_type")
    if model_type == "glm":
        return GlmConfig.from_pretrained(str(folder))
    if model_type != "chatglm":
        raise ModelLoadError(
            f"{config_file}: model_type is {model_type!r}; this tool fine-tunes ChatGLM3 ('chatglm') "
            "or native GLM ('glm') checkpoints only."
        )
    return chatglm_to_glm_config(raw, source=config_file)


def chatglm_to_glm_config(raw: dict, source: Path | str = "config.json") -> GlmConfig:
    unsupported = {k: raw[k] for k, v in SUPPORTED_VARIANT.items() if k in raw and raw[k] != v}
    if unsupported:
        raise ModelLoadError(f"{source}: unsupported ChatGLM variant {unsupported}; ChatGLM3 has {SUPPORTED_VARIANT}")
    required = ("padded_vocab_size", "hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ModelLoadError(f"{source}: ChatGLM config lacks {', '.join(missing)}; is the file complete?")
    heads = raw["num_attention_heads"]
    return GlmConfig(
        vocab_size=raw["padded_vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["ffn_hidden_size"],
        num_hidden_layers=raw["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=raw["multi_query_group_num"] if raw.get("multi_query_attention") else heads,
        head_dim=raw.get("kv_channels", raw["hidden_size"] // heads),
        hidden_act="silu",
        attention_dropout=raw.get("attention_dropout", 0.0),
        max_position_embeddings=raw.get("seq_length", 8192),
        rms_norm_eps=raw.get("layernorm_epsilon", 1e-5),
        attention_bias=raw.get("add_qkv_bias", True),
        tie_word_embeddings=False,
        pad_token_id=raw.get("pad_token_id", 0),
        eos_token_id=raw.get("eos_token_id", 2),
        # ChatGLM3 rotates half of each head; the 32k variant stretches the base by rope_ratio.
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * raw.get("rope_ratio", 1),
            "partial_rotary_factor": 0.5,
        },
    )


def nf4_config() -> BitsAndBytesConfig:
    """QLoRA's NF4 with double quantisation; bf16 compute where the GPU has it, else fp16."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ModelLoadError(
            "quantization='nf4' needs bitsandbytes (pip install bitsandbytes); "
            "or load in full precision with --quantization none."
        ) from err
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=device.dtype(),
    )


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    quantization: str | None = "nf4",
    dtype: torch.dtype | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    placement: Placement = ON_DEVICE,
) -> GlmForCausalLM:
    """Load ChatGLM3 (original layout, safetensors or .bin shards, local or hub) or a native Glm folder.

    quantization: "nf4" (4-bit NF4, double quant; the QLoRA setting) or None (full precision).
    dtype: parameter dtype for the unquantised parts; default float32 on CPU, bf16/fp16 on GPU.
    placement: for inference on a small card, the input embedding and the output layer kept in CPU
    memory, never put on the device, not even while loading (`placement.py`).
    """
    if quantization not in ("nf4", None):
        raise ModelLoadError(f"quantization must be 'nf4' or None, not {quantization!r}")
    folder = resolve_model_dir(name_or_path)
    config = read_config(folder)
    if not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
        raise ModelLoadError(
            f"{folder}: config.json is there but no weights (*.safetensors or pytorch_model*.bin). "
            "Download the full checkpoint, including its weight shards."
        )
    register_chatglm_mapping()
    dtype = dtype or device.dtype()
    kwargs = {}
    if quantization == "nf4":
        kwargs["quantization_config"] = nf4_config()
        device_map = device_map or ({"": device.gpu()} if device.cuda() else {"": "cpu"})
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model_class = GlmForCausalLM if placement == ON_DEVICE else off_device(placement)
    try:
        model = model_class.from_pretrained(
            str(folder), config=config, dtype=dtype, device_map=device_map, **kwargs
        )
    except (RuntimeError, ImportError, ValueError) as err:
        if quantization == "nf4" and "bitsandbytes" in str(err).lower():
            raise ModelLoadError(
                f"NF4 loading failed in bitsandbytes: {err}. Check that bitsandbytes supports this machine "
                "(a CUDA GPU, or its CPU backend), or use --quantization none."
            ) from err
        raise
    if quantization == "nf4" and not device.cuda():
        _keep_cpu_nf4_trainable(model)
    if placement.embedding_on_cpu:
        table = checkpoint_tensor(folder, EMBEDDING_NAMES).to(dtype)
        model.model.embed_tokens = CpuEmbedding(table, next(model.model.layers.parameters()).device)
    if placement.head_on_cpu:
        model.lm_head = CpuHead(checkpoint_tensor(folder, HEAD_NAMES))
    return model


EMBEDDING_NAMES = ("transformer.embedding.word_embeddings.weight", "model.embed_tokens.weight")
HEAD_NAMES = ("transformer.output_layer.weight", "lm_head.weight")


def off_device(placement: Placement) -> type[GlmForCausalLM]:
    """GlmForCausalLM built without the matrices `placement` keeps in CPU memory, so that loading
    never puts them on the device; `load_model` then reads each alone into CPU memory."""
    unread = [r"model\.embed_tokens\.weight"] * placement.embedding_on_cpu + [r"lm_head\.weight"] * placement.head_on_cpu

    class GlmOffDevice(GlmForCausalLM):
        _keys_to_ignore_on_load_unexpected = [*IGNORED_KEYS, *unread]

        def __init__(self, config):
            super().__init__(config)
            # no parameters: the checkpoint's tensors for them are left unread
            if placement.embedding_on_cpu:
                self.model.embed_tokens = nn.Module()
            if placement.head_on_cpu:
                self.lm_head = nn.Module()

    return GlmOffDevice


def checkpoint_tensor(folder: Path, names: tuple[str, ...]) -> torch.Tensor:
    """One tensor of a checkpoint folder (the first of `names` it holds), read alone into CPU memory."""
    from safetensors import safe_open

    files = []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
            files = [folder / weight_map[n] for n in names if n in weight_map][:1]
            break
    else:
        files = [f for pattern in WEIGHT_PATTERNS for f in sorted(folder.glob(pattern))]
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), "pt") as shard:
                found = [n for n in names if n in shard.keys()]
                if found:
                    return shard.get_tensor(found[0])
        else:
            shard = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            found = [n for n in names if n in shard]
            if found:
                return shard[found[0]].clone()
    raise ModelLoadError(f"{folder}: no {names[0]} in its weights; is the checkpoint complete?")


def _keep_cpu_nf4_trainable(model) -> None:
    """bitsandbytes repacks CPU NF4 weights for its AVX512-BF16 kernel at the first no-grad forward
    (an eval pass), and that packed path breaks autograd when training resumes. Keep the plain layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
