"""LoRA on the native GLM layers: ChatGLM3's module names, the rank each targeted layer and the memory
can hold, and an adapter folder that is damaged named in one line."""

import json

import pytest

from glmtune.comparison.job import compare
from glmtune.core.config import resolve_lora_targets
from glmtune.core.errors import ConfigError, ModelLoadError
from glmtune.model.loading import read_config
from glmtune.model.lora import check_rank, target_features

from conftest import compare_config, copy_run


def test_lora_targets_accept_chatglm_names():
    assert resolve_lora_targets("query_key_value,dense,dense_h_to_4h,dense_4h_to_h") == \
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert resolve_lora_targets("q_proj, v_proj") == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="unknown module 'mlp'") as err:
        resolve_lora_targets("mlp")
    assert err.value.field == "lora_target"


PLENTY = 2**50


def test_target_features_are_the_models_own(tiny_dir):
    from glmtune.model.loading import load_model

    model = load_model(tiny_dir, quantization=None)
    layer = model.model.layers[0]
    modules = {name.rsplit(".", 1)[-1]: module for name, module in layer.named_modules()}
    for name, (inputs, outputs) in target_features(read_config(tiny_dir)).items():
        assert (modules[name].in_features, modules[name].out_features) == (inputs, outputs), name


def test_lora_rank_against_chatglm3_layers_and_memory(real_tokenizer_dir):
    config = read_config(real_tokenizer_dir)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]
    check_rank(256, targets, config, PLENTY)  # k/v project 4096 features to 2 groups of 128
    with pytest.raises(ConfigError, match="at most 256 .*k_proj"):
        check_rank(257, targets, config, PLENTY)
    check_rank(1024, ["gate_up_proj", "down_proj"], config, PLENTY)
    # 16 bytes per LoRA parameter: r=16 on every target of 28 layers is about 0.5 GiB, 4 fit in 128 MiB
    with pytest.raises(ConfigError, match=r"--lora-r 4 or lower") as caught:
        check_rank(16, targets, config, 2**27)
    assert caught.value.field == "lora_r"
    check_rank(4, targets, config, 2**27)


@pytest.mark.parametrize("name, damage, message", [
    ("adapter_model.safetensors", lambda b: b[: len(b) // 2], "adapter_model.safetensors is damaged"),
    ("adapter_model.safetensors", lambda b: b"", "adapter_model.safetensors is damaged"),
    ("adapter_config.json", lambda b: b[:20], "adapter_config.json is damaged"),
    ("adapter_config.json", lambda b: json.dumps({**json.loads(b), "r": "16"}).encode(),
     "adapter_config.json holds a setting peft cannot use"),
    ("tokenizer.json", lambda b: b[:1000], "tokenizer.json or tokenizer_config.json is damaged"),
    ("tokenizer_config.json", lambda b: b"[]", "tokenizer.json or tokenizer_config.json is damaged"),
    # valid, but names fewer modules than were trained: peft would drop the rest without a word
    ("adapter_config.json", lambda b: json.dumps({**json.loads(b), "target_modules": ["q_proj"]}).encode(),
     "holds .* weights that .*adapter_config.json does not name"),
])
def test_a_damaged_adapter_folder_is_named(trained, tmp_path, name, damage, message):
    run = copy_run(trained, tmp_path)
    path = run / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ModelLoadError, match=message):
        compare(compare_config(run))
