"""How the comparison holds the weights: 16-bit with the adapter merged after the base side, or NF4
with it unmerged when memory is short; static-cache and compiled-shape decoding."""

import json

import pytest
import torch
from peft import PeftModel

import glmtune
from glmtune.comparison.generation import Decoding, batches, generate_answers
from glmtune.comparison.inference import GiB, Shape, Sides, WeightsPlan, plan_compile, plan_weights
from glmtune.comparison.job import compare, comparison
from glmtune.core import device
from glmtune.core.config import CompareConfig
from glmtune.core.errors import ConfigError, DataError
from glmtune.model.loading import chatglm_to_glm_config
from glmtune.model.prompts import prompt_ids
from glmtune.training.compiling import record_compile_cost

from conftest import CHATGLM3, MEMINFO, plain_peft


QUESTIONS = ["头痛三天怎么办？", "孩子发烧38度要吃药吗？ 孩子2岁。", "高血压", "胃痛反酸是什么原因？ 饭后明显，已经一周。"]


def logits(model, tok):
    ids = torch.tensor([prompt_ids(tok, q, "glm3") for q in QUESTIONS[:1]])
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 0.1)])
def test_merged_weights_give_the_unmerged_adapters_logits(trained, dtype, tolerance):
    out, _ = trained
    tok = glmtune.load_tokenizer(out)
    plain = logits(glmtune.load_model("tiny", quantization=None, dtype=dtype).eval(), tok)
    model = plain_peft(glmtune.load_model("tiny", quantization=None, dtype=dtype), out)
    unmerged = logits(model, tok)
    merged = logits(model.merge_and_unload(), tok)
    assert (unmerged - plain).abs().max() > 20 * tolerance  # the adapter changes the logits
    assert (merged - unmerged).abs().max() < tolerance


def test_merged_path_base_side_equals_the_adapter_disabled_model(trained):
    out, _ = trained
    tok = glmtune.load_tokenizer(out)
    prompts = [prompt_ids(tok, q, "glm3") for q in QUESTIONS]
    decoding = Decoding(max_new_tokens=12)
    reference = plain_peft(glmtune.load_model("tiny", quantization=None), out)
    with reference.disable_adapter():
        base_expected = generate_answers(reference, tok, prompts, decoding, 4)
    tuned_expected = generate_answers(reference, tok, prompts, decoding, 4)

    sides = Sides.load("tiny", out, WeightsPlan(True, "fp32", 4, 4, "test"))
    assert not isinstance(sides.model, PeftModel)  # the base side runs on plain, untouched weights
    with sides.base_side() as model:
        base = generate_answers(model, tok, prompts, decoding, 4)
    tuned = generate_answers(sides.tuned_side(), tok, prompts, decoding, 4)
    assert [a.text for a in base] == [a.text for a in base_expected]
    assert [a.text for a in tuned] == [a.text for a in tuned_expected] != [a.text for a in base]
    with pytest.raises(RuntimeError, match="base side runs first"):
        with sides.base_side():
            pass


def test_compiled_batches_of_one_shape_drop_the_repeats(trained):
    out, model = trained
    tok = glmtune.load_tokenizer(out)
    prompts = [prompt_ids(tok, q, "chat") for q in [*QUESTIONS, "失眠怎么办？"]]
    plain = Decoding(max_new_tokens=8, cache_len=128)
    shaped = Decoding(max_new_tokens=8, cache_len=128, compiled=True)  # compiles on CUDA only; here it shapes batches
    expected = generate_answers(model.eval(), tok, prompts, plain, 2)  # batches of 2, 2, 1
    got = generate_answers(model, tok, prompts, shaped, 2)  # 2, 2, and 1 topped up with a repeat
    assert [a.text for a in got] == [a.text for a in expected] and len(set(a.text for a in got)) > 1


def test_static_cache_answers_equal_the_growing_caches(trained):
    out, model = trained
    tok = glmtune.load_tokenizer(out)
    prompts = [prompt_ids(tok, q, "chat") for q in QUESTIONS]
    growing = generate_answers(model.eval(), tok, prompts, Decoding(max_new_tokens=16), 3)
    static = generate_answers(model, tok, prompts, Decoding(max_new_tokens=16, cache_len=128), 3)
    assert [a.text for a in static] == [a.text for a in growing]
    assert [a.new_tokens for a in static] == [a.new_tokens for a in growing]


@pytest.mark.parametrize("n, size", [(1, 128), (27, 128), (200, 128), (201, 128), (7, 1), (9, 4)])
def test_batches_are_near_equal_and_equal_shapes_when_compiled(n, size):
    order = list(range(n))
    plain = batches(order, size, equal=False)
    assert sum(plain, []) == order and len(plain) == -(-n // size)
    assert max(map(len, plain)) - min(map(len, plain)) <= 1 and max(map(len, plain)) <= size
    equal = batches(order, size, equal=True)
    assert len({len(b) for b in equal}) == 1 and set(sum(equal, [])) == set(order)


@pytest.fixture(scope="module")
def chatglm3_shape():
    if not (CHATGLM3 / "config.json").is_file():
        pytest.skip("../shared/chatglm3/config.json is absent")
    return Shape.of(chatglm_to_glm_config(json.loads((CHATGLM3 / "config.json").read_text())))


@pytest.mark.parametrize("card_gib, merged", [(6, False), (8, False), (12, False), (16, True), (24, True),
                                               (80, True), (141, True)])
def test_auto_holds_16_bit_weights_where_they_fit(chatglm3_shape, card_gib, merged):
    free = (card_gib - 0.6) * GiB  # after the CUDA context
    plan = plan_weights("auto", "nf4", chatglm3_shape, free, 27, 300, 576, 256, on_gpu=True)
    assert plan.merged is merged and plan.quantization == (None if merged else "nf4")
    assert plan.batch_size <= 27 and plan.reason.startswith("auto:")
    if card_gib >= 24:
        assert plan.batch_size == 27  # the whole default eval split in one batch
    weights = chatglm3_shape.weight_bytes(not merged, 2)
    assert weights + plan.batch_size * chatglm3_shape.row_bytes(300, 576, 2) < free


def usable(card_gib: float) -> float:
    """What PyTorch gets of a card (bench_gpu.usable_gib): a 4 GB card leaves about 3.3 GiB."""
    return (card_gib * 0.98 - 0.6) * GiB


def resting(shape: Shape, plan: WeightsPlan) -> float:
    """The weights as the plan holds them, and the 4-bit matrices' unpacked transient."""
    return shape.weight_bytes(not plan.merged, 2, plan.placement) + (0 if plan.merged else shape.unpack_bytes(2))


@pytest.mark.parametrize("card_gib, scored_len", [(4, 300), (6, 1024), (16, 1024)])
def test_perplexity_batches_and_logit_chunks_fit_beside_the_weights(chatglm3_shape, card_gib, scored_len):
    free = usable(card_gib)
    plan = plan_weights("auto", "nf4", chatglm3_shape, free, 27, 120, 384, 256, True, scored_len=scored_len)
    logits = plan.perplexity_chunk * chatglm3_shape.vocab * (2 + 8)
    assert resting(chatglm3_shape, plan) + plan.perplexity_batch * chatglm3_shape.perplexity_row_bytes(
        scored_len, 2) + logits <= free
    assert plan.perplexity_chunk >= 32  # still a matrix product, not a loop over positions


def test_explicit_choices_are_kept(chatglm3_shape):
    big, small = 139 * GiB, 7.4 * GiB
    assert not plan_weights("nf4", "nf4", chatglm3_shape, big, 27, 300, 576, 256, True).merged
    assert plan_weights("none", "nf4", chatglm3_shape, big, 27, 300, 576, 256, True).merged
    assert not plan_weights("as-trained", "nf4", chatglm3_shape, big, 27, 300, 576, 256, True).merged
    assert plan_weights("as-trained", "none", chatglm3_shape, big, 27, 300, 576, 256, True).merged
    with pytest.raises(ConfigError, match="--quantization auto or nf4"):
        plan_weights("none", "nf4", chatglm3_shape, small, 27, 300, 576, 256, True)
    reason = plan_weights("as-trained", "nf4", chatglm3_shape, big, 27, 300, 576, 256, True).reason
    assert reason == "--quantization as-trained (the run trained on nf4): the weights the adapter was trained against"
    assert plan_weights("nf4", "none", chatglm3_shape, big, 27, 300, 576, 256, True).reason.endswith("third of the memory")


def test_compile_auto_weighs_the_work_against_the_compile_cost(monkeypatch, tmp_path):
    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path))
    merged, nf4 = WeightsPlan(True, "bf16", 27, 16, ""), WeightsPlan(False, "bf16", 27, 16, "")
    small = plan_compile("auto", merged, 27, 256, 576, "m", on_gpu=True)  # 512 steps: ~13 s saved < ~44 s
    assert not small.on and small.reason.startswith("eager (auto: 512 decoding steps")
    big = plan_compile("auto", merged, 27, 2048, 2368, "m", on_gpu=True)
    assert big.on and big.reason.startswith("compiled (auto:")
    record_compile_cost(small.key, 8.0)  # torch's compile cache makes a repeat of the same shapes cheap
    again = plan_compile("auto", merged, 27, 256, 576, "m", on_gpu=True)
    assert again.on and "measured here before costs ~8 s" in again.reason
    assert not plan_compile("on", nf4, 27, 2048, 2368, "m", on_gpu=True).on
    assert not plan_compile("on", merged, 27, 2048, 2368, "m", on_gpu=False).on
    assert plan_compile("on", merged, 1, 8, 64, "m", on_gpu=True).on
    assert not plan_compile("off", merged, 27, 2048, 2368, "m", on_gpu=True).on


def test_a_tiny_model_keeps_16_bit_weights_and_whole_batches_on_cpu_whatever_is_free_now():
    tiny = Shape(vocab=1000, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16)
    plan = plan_weights("auto", "nf4", tiny, 0.8 * GiB, 27, 300, 576, 256, on_gpu=False)
    assert plan.merged and plan.batch_size == 27 and plan.reason.startswith("auto: fp32 weights")


def test_short_memory_falls_back_to_nf4_saying_why_and_how_to_force_16_bit(trained, tmp_path, monkeypatch):
    out, _ = trained
    (tmp_path / "meminfo").write_text(MEMINFO, encoding="ascii")
    monkeypatch.setattr(device, "MEMINFO", str(tmp_path / "meminfo"))
    plenty = compare(CompareConfig(adapter=out, output=tmp_path / "a", max_new_tokens=6, num_samples=4))
    assert plenty.report.settings.weights.startswith("fp32, adapter merged after the base side")
    assert plenty.loaded.weights.batch_size == len(plenty.prompts.items)  # all in one batch
    # RAM read as less than the tiny model's 16-bit weights, its margin and a batch need
    shape = Shape.of(glmtune.load_model("tiny", quantization=None).config)
    monkeypatch.setattr(device, "free_memory", lambda: shape.weight_bytes(False, 4))
    console = []
    job = comparison(CompareConfig(adapter=out, output=tmp_path / "b", max_new_tokens=6, num_samples=4),
                     console.extend)
    weights = job.report.settings.weights
    assert weights.startswith("NF4, adapter unmerged")
    assert "more than the" in weights and "decodes far slower on CPU (--quantization none forces 16-bit" in weights
    assert f"weights:  {weights}" in console  # on screen before any answer is generated
    assert not job.loaded.sides.merged and isinstance(job.loaded.sides.model, PeftModel)
    assert all(a.new_tokens > 0 for a in job.answers.tuned.answers)
    log = (job.output / "chatglm_comparison.log").read_text(encoding="utf-8")
    assert "weights: NF4, adapter unmerged" in log
    assert job.loaded.weights.batch_size == 1 and not job.report.aggregate.metrics["latency_s"].difference.batch
    forced = compare(CompareConfig(adapter=out, output=tmp_path / "c", max_new_tokens=6, num_samples=4,
                                   quantization="none"))
    assert forced.loaded.sides.merged and forced.loaded.weights.batch_size == len(forced.prompts.items)
    assert "the OS can give; it may swap" in forced.report.settings.weights


def test_a_prompt_longer_than_the_context_is_refused_before_the_folder(trained, tmp_path):
    out, _ = trained
    config = CompareConfig(adapter=out, output=tmp_path / "c", prompt=["头痛" * 3000])
    with pytest.raises(DataError, match=r"prompt 1 \(头痛头痛.*\) is \d+ tokens; with --max-new-tokens 256 the context"):
        compare(config)
    assert not (tmp_path / "c").exists()
