"""LoRA on the native `GlmForCausalLM`: target names (ChatGLM3's or native) and attaching adapters."""

from __future__ import annotations

import functools
import math
from pathlib import Path

from ..core.errors import ConfigError, ModelLoadError
from ..core.quiet import quiet_peft

# fp32 weight and gradient, and AdamW's two moments, per LoRA parameter
LORA_BYTES_PER_PARAMETER = 16


def target_features(config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each LoRA target module of one decoder layer, from a `GlmConfig`."""
    hidden, inner = config.hidden_size, config.intermediate_size
    queries, groups = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    return {"q_proj": (hidden, queries), "k_proj": (hidden, groups), "v_proj": (hidden, groups),
            "o_proj": (queries, hidden), "gate_up_proj": (hidden, 2 * inner), "down_proj": (inner, hidden)}


def check_rank(r: int, targets: list[str], config, available: int) -> None:
    """ConfigError("lora_r") for a rank that no targeted layer can use (B·A has rank at most its
    smallest side), or whose adapters alone, with their gradients and AdamW states, exceed the
    `available` bytes: either would grow until the OS kills the process without a word."""
    features = target_features(config)
    smallest = min(targets, key=lambda t: min(features[t]))
    limit = min(features[smallest])
    if r > limit:
        raise ConfigError("lora_r", f"{r} must be at most {limit} (the smallest targeted layer, {smallest}, has "
                                    f"{limit} features; a higher rank adds nothing); ranks of 8 to 64 are usual")
    per_rank = training_bytes(1, targets, config)
    if r * per_rank > available:
        raise ConfigError("lora_r", f"{r} needs {r * per_rank / 2**30:.1f} GiB for the LoRA weights, gradients and "
                                    f"optimizer states alone, and {available / 2**30:.1f} GiB is free; use "
                                    f"--lora-r {int(available // per_rank)} or lower")


def training_bytes(r: int, targets: list[str], config) -> float:
    """Memory of rank-`r` adapters on `targets` in training: weights, gradients and AdamW states."""
    features = target_features(config)
    return r * LORA_BYTES_PER_PARAMETER * config.num_hidden_layers * sum(sum(features[t]) for t in targets)


def attach_lora(model, r: int, alpha: int, dropout: float, targets: list[str]):
    """`model` wrapped by peft with fresh LoRA adapters on `targets`."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    with quiet_peft():
        model = get_peft_model(model, config)
    return _plain_saves(model)


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_adapter_files(folder: Path) -> None:
    """ConfigError when a run folder lacks its adapter (a run that never finished)."""
    missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError("adapter", f"{folder} is incomplete: {', '.join(missing)} missing. If its training run "
                                     "was interrupted, continue it (the same command with --resume); if the files "
                                     "were removed or not copied, copy them again or train again")


def adapter_parameters(folder: Path) -> int:
    """The values in a run's adapter file, read from its header (0 where it cannot be read: loading
    the adapter then says what is wrong with it)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / ADAPTER_FILES[1]), "pt") as f:
            return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    except (OSError, SafetensorError):
        return 0


def load_adapter(model, folder: Path, base: str):
    """`model` (loaded from `base`) with the trained adapter in `folder` attached (inference).
    A damaged adapter, or one trained on another base, is a ModelLoadError naming the file."""
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict
    from safetensors import SafetensorError, safe_open

    config_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    again = "copy the training run's folder again, or train again into a new --output-dir"
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, KeyError) as err:  # bad JSON, a list, a field of the wrong type or name
        raise ModelLoadError(f"{config_file} is damaged ({type(err).__name__}: {err}); {again}") from None
    try:
        with safe_open(str(weights), "pt") as f:
            stored = set(f.keys())
    except SafetensorError as err:
        raise ModelLoadError(f"{weights} is damaged ({err}), e.g. cut short by a full disk or an interrupted "
                             f"copy; {again}") from None
    try:
        with quiet_peft():
            model = PeftModel.from_pretrained(model, str(folder), config=config)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ModelLoadError(f"the adapter in {folder} does not fit {base} ({detail}); pass the --base-model it was "
                             "trained on") from None
    except TypeError as err:  # a setting of the wrong type, e.g. "r": "16", surfaces only while building layers
        raise ModelLoadError(f"{config_file} holds a setting peft cannot use ({err}); {again}") from None
    except ValueError as err:  # peft's "Target modules {...} not found in the base model"
        raise ModelLoadError(f"the adapter in {folder} does not fit {base}: {err}") from None
    # peft loads what adapter_config.json names and silently ignores other stored weights.
    ignored = stored - set(get_peft_model_state_dict(model, save_embedding_layers=False))
    if ignored:
        raise ModelLoadError(f"{weights} holds {len(ignored)} weights that {config_file} does not name (e.g. "
                             f"{sorted(ignored)[0]}): the two files come from different runs; {again}")
    return model


def _plain_saves(model):
    """Every save of `model` (the final adapter and the Trainer's checkpoints) writes the adapter and
    nothing else."""
    # peft's save_embedding_layers="auto" re-reads the base's config.json to detect a resized vocab;
    # ChatGLM3's original config misreads as resized, and every save would carry both 0.5 GB embedding
    # matrices. The vocabulary is never resized here.
    model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    # peft also writes a boilerplate model card (README.md, "[More Information Needed]" in every
    # section) beside each adapter, and edits a README.md already there: a run folder holds only
    # files that describe the run, and a user's README.md stays as written.
    model.create_or_update_model_card = lambda output_dir: None
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as the values they store."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # two 4-bit values per byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
