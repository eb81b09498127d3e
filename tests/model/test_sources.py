"""Where model files come from: hub ids found in the ModelScope cache, a model folder that lacks its
tokenizer, and a tiny-model cache that cannot be written."""

import shutil

import pytest

import glmtune
from glmtune.core import cli
from glmtune.core.errors import ModelLoadError
from glmtune.model.sources import resolve_model_dir
from glmtune.training.job import train

from conftest import tiny_config


def test_model_ids_resolve_to_the_modelscope_cache(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "models" / "ZhipuAI" / "chatglm3-6b"
    shutil.copytree(tiny_dir, cached)
    assert resolve_model_dir("ZhipuAI/chatglm3-6b") == cached
    legacy = tmp_path / "hub" / "ZhipuAI" / "chatglm3-6b-32k"  # older ModelScope versions, no models/ level
    shutil.copytree(tiny_dir, legacy)
    assert resolve_model_dir("ZhipuAI/chatglm3-6b-32k") == legacy
    model = glmtune.load_model("ZhipuAI/chatglm3-6b", quantization=None)
    assert model.config.num_hidden_layers == 2


def test_a_model_folder_without_its_tokenizer_can_be_fixed_and_rerun(data_file, tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / "tokenizer.model").rename(tmp_path / "tokenizer.model")
    out = tmp_path / "run"
    config = tiny_config(data_file, out, "--max-steps", "1")
    config.model = str(model)
    with pytest.raises(ModelLoadError, match=r"no tokenizer.model .*copy tokenizer.model into it"):
        train(config)
    (tmp_path / "tokenizer.model").rename(model / "tokenizer.model")
    assert train(config).trainer.state.global_step == 1  # the same command, once the folder is fixed


def test_an_unwritable_cache_names_glmtune_cache(monkeypatch, tmp_path):
    from glmtune.core.errors import ModelLoadError
    from glmtune.model.tiny import ensure_tiny

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("GLMTUNE_CACHE", str(blocked / "cache"))
    with pytest.raises(ModelLoadError) as refused:
        ensure_tiny()
    code, line, _ = cli.explain(refused.value)
    assert code == cli.EXIT_ERROR and "\n" not in line
    assert line.startswith(f"error: {blocked / 'cache'}: cannot write the tiny model's cache there (")
    assert "set GLMTUNE_CACHE to a folder you can write to" in line
