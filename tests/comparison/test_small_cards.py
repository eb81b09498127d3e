"""Inference on small cards: the input embedding moved to CPU memory and the output layer quantized
only as far as memory requires, and a clear refusal, before anything loads, where nothing fits. The
plans are checked against ChatGLM3-6B's real config with a faked budget; the placements themselves
run on CPU with the tiny model."""

import json
import shutil

import pytest
import torch

import glmtune
from glmtune.comparison.generation import Decoding, generate_answers, reference_perplexity
from glmtune.comparison.inference import GiB, Sides, WeightsPlan, plan_chat, plan_weights
from glmtune.comparison.job import comparison
from glmtune.core import cli, device
from glmtune.core.config import CompareConfig, TrainConfig
from glmtune.core.errors import ConfigError, ModelLoadError
from glmtune.export.job import merge_device
from glmtune.model.loading import chatglm_to_glm_config
from glmtune.model.placement import ON_DEVICE, CpuHead, Placement, Shape
from glmtune.model.prompts import encode, prompt_ids
from glmtune.data.reading import Example

from conftest import CHATGLM3

ADAPTER_PARAMS = 33_357_824  # the default LoRA (r=16 on qkv, o, gate/up, down) on ChatGLM3-6B


def usable(card_gib: float) -> float:
    """What PyTorch gets of a card (bench_gpu.usable_gib): a 4 GB card leaves about 3.3 GiB."""
    return (card_gib * 0.98 - 0.6) * GiB


@pytest.fixture(scope="module")
def shape():
    if not (CHATGLM3 / "config.json").is_file():
        pytest.skip("../shared/chatglm3/config.json is absent")
    return Shape.of(chatglm_to_glm_config(json.loads((CHATGLM3 / "config.json").read_text())))


def on_gpu(shape: Shape, plan: WeightsPlan) -> float:
    """What the plan puts on the GPU before any prompt: weights, adapter, the 4-bit unpacked transient."""
    return shape.weight_bytes(True, 2, plan.placement) + ADAPTER_PARAMS * 2 + shape.unpack_bytes(2)


@pytest.mark.parametrize("card_gib, placement", [
    (4, Placement(embedding_on_cpu=True, head_on_cpu=True)),
    (5, Placement(embedding_on_cpu=True)),
    (6, ON_DEVICE), (8, ON_DEVICE)])
def test_small_cards_move_the_embedding_then_quantize_the_head_only_as_needed(shape, card_gib, placement):
    free = usable(card_gib)
    plan = plan_weights("auto", "nf4", shape, free, 27, 300, 576, 256, True, scored_len=400,
                        adapter_params=ADAPTER_PARAMS)
    assert plan.placement == placement and not plan.merged
    assert on_gpu(shape, plan) + plan.batch_size * shape.row_bytes(300, 576, 2) < free
    assert plan.batch_size >= (1 if placement.head_on_cpu else 8)
    line = plan.describe()
    if placement == ON_DEVICE:
        assert "CPU memory" not in line and "output layer" not in line
    else:  # the weights line says what went where, and why
        assert line.startswith("NF4, adapter unmerged; input embedding in CPU memory (a lookup)")
        assert f"in the {free / GiB:.1f} GiB free" in line
        assert ("output layer in CPU memory (fp32 there)" in line) == placement.head_on_cpu


def test_a_card_too_small_even_for_that_is_refused_with_what_is_needed_and_the_options(shape):
    with pytest.raises(ModelLoadError) as refused:
        plan_weights("auto", "nf4", shape, usable(2), 27, 300, 576, 256, True, adapter_params=ADAPTER_PARAMS)
    line = cli.message(refused.value)
    assert "\n" not in line
    assert "one prompt needs about 3.1 GiB of GPU memory" in line and "and 1.4 GiB is free" in line
    assert "--device cpu" in line and "a GPU with more memory" in line


def test_the_chat_keeps_a_shorter_conversation_where_the_whole_context_does_not_fit(shape):
    plan, length = plan_chat("auto", "nf4", shape, usable(8), 8192, 256, True, ADAPTER_PARAMS)
    assert length == 8192 and plan.placement == ON_DEVICE
    plan, length = plan_chat("auto", "nf4", shape, usable(4), 8192, 256, True, ADAPTER_PARAMS)
    assert plan.placement.head_on_cpu and 256 < length < 8192 and length % 256 == 0
    assert on_gpu(shape, plan) + shape.row_bytes(length - 256, length, 2) < usable(4)
    with pytest.raises(ModelLoadError, match="--device cpu"):
        plan_chat("auto", "nf4", shape, usable(2), 8192, 256, True, ADAPTER_PARAMS)


@pytest.fixture(scope="module")
def tiny_nf4_answers(trained):
    """Greedy answers and reference perplexities of the tiny run's both sides, NF4, all on the device
    (here the CPU too: what moves is the code path, which a GPU would run the same way)."""
    out, _ = trained
    return out, run_sides(out, ON_DEVICE)


def run_sides(out, placement: Placement):
    tok = glmtune.load_tokenizer(out)
    questions = ["头痛三天怎么办？", "孩子发烧38度要吃药吗？", "高血压吃什么好？"]
    prompts = [prompt_ids(tok, q, "glm3") for q in questions]
    scored = [encode(tok, Example(q, "多喝水，注意休息，必要时就医。", 0), "glm3", 256) for q in questions]
    sides = Sides.load("tiny", out, WeightsPlan(False, "fp32", 3, 3, "test", placement=placement))
    results = {}
    for side in ("base", "tuned"):
        with sides.base_side() if side == "base" else torch.no_grad():
            model = sides.model
            results[side] = ([a.text for a in generate_answers(model, tok, prompts, Decoding(max_new_tokens=10), 3)],
                             reference_perplexity(model, scored, tok.pad_token_id, 3, chunk=7))
    return sides.model, results


@pytest.mark.parametrize("placement", [Placement(embedding_on_cpu=True),
                                       Placement(embedding_on_cpu=True, head_on_cpu=True)])
def test_matrices_in_cpu_memory_change_no_answer_and_no_perplexity(tiny_nf4_answers, placement):
    out, expected = tiny_nf4_answers
    model, moved = run_sides(out, placement)
    names = " ".join(name for name, _ in model.named_parameters())
    assert "embed_tokens" not in names and ("lm_head" in names) != placement.head_on_cpu  # not device weights
    assert isinstance(model.get_base_model().lm_head, CpuHead) == placement.head_on_cpu
    for side in ("base", "tuned"):
        assert moved[side][0] == expected[1][side][0]  # the same greedy answers
        assert moved[side][1] == pytest.approx(expected[1][side][1], rel=1e-5)


@pytest.fixture
def six_b_folder(tmp_path):
    """ChatGLM3-6B's config and tokenizer, without weights: enough to plan, never to load."""
    if not (CHATGLM3 / "tokenizer.model").is_file():
        pytest.skip("../shared/chatglm3 is absent")
    folder = tmp_path / "chatglm3-6b"
    folder.mkdir()
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(CHATGLM3 / name, folder / name)
    return folder


@pytest.fixture
def small_gpu(monkeypatch):
    """This CPU machine seen as a 2 GB card: 1.4 GiB free."""
    monkeypatch.setattr(device, "cuda", lambda: True)
    monkeypatch.setattr(device, "free_memory", lambda: usable(2))
    monkeypatch.setattr(device, "limit_memory", lambda gib: None)
    monkeypatch.setattr(device, "resolve_precision", lambda choice="auto": "bf16")


def test_a_comparison_that_cannot_fit_is_refused_before_any_folder_or_model(trained, six_b_folder, small_gpu,
                                                                            tmp_path):
    out, _ = trained
    config = CompareConfig(adapter=out, base_model=str(six_b_folder), output=tmp_path / "report", num_samples=2)
    with pytest.raises(ModelLoadError, match=r"does not fit on this GPU: .* and 1\.4 GiB is free\. Use --device cpu"):
        comparison(config, lambda lines: None)
    assert not (tmp_path / "report").exists()


def test_training_that_cannot_fit_is_refused_before_the_output_folder(data_file, six_b_folder, small_gpu, tmp_path):
    from glmtune.training.job import train

    config = TrainConfig(model=str(six_b_folder), data=data_file, output_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        train(config)
    line = cli.message(refused.value)
    assert line.startswith(f"training {six_b_folder} needs about 4.") and "and 1.4 GiB is free" in line
    assert "a GPU with more memory" in line and "\n" not in line
    assert not (tmp_path / "run").exists()


def test_an_export_merge_that_cannot_fit_is_refused_naming_the_other_device(small_gpu, monkeypatch):
    model_bytes = 6_243_584_000 * 2  # ChatGLM3-6B in bf16
    with pytest.raises(ConfigError, match=r"cuda: the merge needs about 15\.12 GiB of GPU memory and 1\.36 GiB is "
                                          r"free; use --device cpu"):
        merge_device("cuda", model_bytes)
    monkeypatch.setattr(device, "ram_available", lambda: 8 * GiB)
    with pytest.raises(ConfigError, match=r"the merge on the CPU needs about 12\.79 GiB of RAM .* and 8\.00 GiB is "
                                          "available"):
        merge_device("auto", model_bytes)


def test_device_cpu_hides_the_gpu_and_device_cuda_insists_on_one(monkeypatch):
    import os

    monkeypatch.setattr(device, "_cpu_only", False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    device.cuda.cache_clear()
    try:
        assert device.cuda()
        device.select("cpu")
        assert not device.cuda() and os.environ["CUDA_VISIBLE_DEVICES"] == ""
        monkeypatch.setattr(device, "_cpu_only", False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        device.cuda.cache_clear()
        with pytest.raises(ConfigError) as no_gpu:
            device.select("cuda")
        assert cli.message(no_gpu.value).startswith("--device cuda: no CUDA GPU was found")
    finally:
        monkeypatch.undo()
        device.cuda.cache_clear()
        device.bf16_supported.cache_clear()
