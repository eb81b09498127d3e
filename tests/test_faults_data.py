"""Faults in what a run is fed: a LoRA rank the model cannot hold, rows with nothing to learn,
comparisons on prompts the adapter saw in training, and legacy encodings read as the wrong one."""

import pytest

from glmtune.checkpoint import read_config
from glmtune.errors import ConfigError
from glmtune.finetune import FineTune
from glmtune.lora import check_rank, target_features

from conftest import tiny_config

PLENTY = 2**50


def test_a_lora_rank_above_the_smallest_targeted_layer_is_refused_before_the_folder(data_file, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as caught:
        FineTune(tiny_config(data_file, out, "--lora-r", "100000")).prepare()
    assert caught.value.field == "lora_r"
    assert "at most 64" in str(caught.value) and "k_proj" in str(caught.value)
    assert not out.exists()  # refused before the output folder was claimed, let alone a model loaded
    FineTune(tiny_config(data_file, tmp_path / "default")).prepare()  # the default rank passes


def test_target_features_are_the_models_own(tiny_dir):
    from glmtune.checkpoint import load_model

    model = load_model(tiny_dir, quantization=None)
    layer = model.model.layers[0]
    modules = {**vars(layer.self_attn)["_modules"], **vars(layer.mlp)["_modules"]}
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
