"""LoRA on the native `GlmForCausalLM`: target names (ChatGLM3's or native) and attaching adapters."""

from __future__ import annotations

import functools

from .errors import ConfigError
from .quiet import quiet_peft

NATIVE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
# The seed (and ChatGLM3 docs) name modules by their original names; the native model splits qkv.
CHATGLM_ALIASES = {
    "query_key_value": ("q_proj", "k_proj", "v_proj"),
    "dense": ("o_proj",),
    "dense_h_to_4h": ("gate_up_proj",),
    "dense_4h_to_h": ("down_proj",),
}


def resolve_lora_targets(spec: str) -> list[str]:
    """Comma-separated module names (native or ChatGLM3's) -> native `GlmForCausalLM` names."""
    targets: list[str] = []
    for name in filter(None, (part.strip() for part in spec.split(","))):
        for target in CHATGLM_ALIASES.get(name, (name,)):
            if target not in NATIVE_TARGETS:
                known = ", ".join([*NATIVE_TARGETS, *CHATGLM_ALIASES])
                raise ConfigError("lora_target", f"unknown module {name!r}; use some of: {known}")
            if target not in targets:
                targets.append(target)
    if not targets:
        raise ConfigError("lora_target", "is empty; e.g. q_proj,k_proj,v_proj,o_proj")
    return targets


def attach_lora(model, r: int, alpha: int, dropout: float, targets: list[str]):
    """`model` wrapped by peft with fresh LoRA adapters on `targets`."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    with quiet_peft():
        model = get_peft_model(model, config)
    return _without_embedding_copies(model)


def load_adapter(model, folder):
    """`model` with the trained adapter in `folder` attached (inference)."""
    from peft import PeftModel

    with quiet_peft():
        return PeftModel.from_pretrained(model, str(folder))


def _without_embedding_copies(model):
    # peft's save_embedding_layers="auto" re-reads the base's config.json to detect a resized vocab;
    # ChatGLM3's original config misreads as resized, and every save (the Trainer's checkpoints too)
    # would carry both 0.5 GB embedding matrices. The vocabulary is never resized here.
    model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as the values they store."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # two 4-bit values per byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
