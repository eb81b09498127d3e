"""Native loading of the original ChatGLM3 layout, checked against a forward pass written here
from the original weights (the ChatGLM3 reference implementation, restated minimally)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import glmtune
from glmtune.model.loading import chatglm_to_glm_config
from glmtune.core.errors import ModelLoadError
from glmtune.model.tiny import TINY_SHAPE, original_config, random_original_weights, write_original_checkpoint


def chatglm3_reference_logits(weights: dict, config: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """ChatGLM3's forward from its own tensor names: RMSNorm, fused qkv with multi-query groups,
    interleaved rotary on the first half of each head, SwiGLU (silu(first half) * second half)."""
    w = {k: v.double() for k, v in weights.items()}
    heads, groups, d = config["num_attention_heads"], config["multi_query_group_num"], config["kv_channels"]
    eps = config["layernorm_epsilon"]
    seq = input_ids.shape[-1]

    def rms(x, weight):
        return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    rot = d // 2
    theta = 1.0 / (10000.0 * config.get("rope_ratio", 1)) ** (torch.arange(0, rot, 2, dtype=torch.double) / rot)
    angles = torch.outer(torch.arange(seq, dtype=torch.double), theta)  # [seq, rot/2]
    cos, sin = angles.cos(), angles.sin()

    def rope(x):  # x: [seq, n, d]; pairs (x0, x1) of the first `rot` dims rotate together
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        x0, x1 = x_rot[..., 0::2], x_rot[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2)
        return torch.cat([out, x_pass], dim=-1)

    h = w["transformer.embedding.word_embeddings.weight"][input_ids[0]]
    mask = torch.full((seq, seq), float("-inf"), dtype=torch.double).triu(1)
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        x = rms(h, w[p + "input_layernorm.weight"])
        qkv = x @ w[p + "self_attention.query_key_value.weight"].T + w[p + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([heads * d, groups * d, groups * d], dim=-1)
        q, k, v = rope(q.view(seq, heads, d)), rope(k.view(seq, groups, d)), v.view(seq, groups, d)
        k = k.repeat_interleave(heads // groups, dim=1)
        v = v.repeat_interleave(heads // groups, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d) + mask
        ctx = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(seq, heads * d)
        h = h + ctx @ w[p + "self_attention.dense.weight"].T
        x = rms(h, w[p + "post_attention_layernorm.weight"])
        gate, up = (x @ w[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        h = h + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.dense_4h_to_h.weight"].T
    h = rms(h, w["transformer.encoder.final_layernorm.weight"])
    return (h @ w["transformer.output_layer.weight"].T)[None]


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return glmtune.load_model(tiny_dir, quantization=None).eval()


def test_tiny_checkpoint_is_in_original_layout(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "chatglm"
    names = load_file(str(tiny_dir / "model.safetensors")).keys()
    assert "transformer.encoder.layers.0.self_attention.query_key_value.weight" in names
    assert not any(n.startswith("model.") for n in names)
    dims = [config["hidden_size"], config["ffn_hidden_size"], config["padded_vocab_size"], config["kv_channels"] * 2]
    assert all(dim % 64 == 0 for dim in dims)


def test_native_logits_equal_reference_forward(tiny_dir, tiny_model):
    config = json.loads((tiny_dir / "config.json").read_text())
    weights = load_file(str(tiny_dir / "model.safetensors"))
    ids = torch.randint(3, config["padded_vocab_size"], (1, 23), generator=torch.Generator().manual_seed(1))
    expected = chatglm3_reference_logits(weights, config, ids)
    with torch.no_grad():
        got = tiny_model(input_ids=ids).logits.double()
    rel = (got - expected).norm() / expected.norm()
    assert rel < 1e-5, f"relative logits difference {rel:.2e}"


def test_rope_ratio_reaches_rope_theta(tmp_path):
    config = original_config(500, hidden_size=128, num_attention_heads=4, kv_channels=32,
                             multi_query_group_num=2, ffn_hidden_size=256, num_layers=1, seq_length=256)
    config["rope_ratio"] = 50
    assert chatglm_to_glm_config(config).rope_parameters["rope_theta"] == 500000.0
    write_original_checkpoint(tmp_path, config, weights := random_original_weights(config, seed=3))
    model = glmtune.load_model(tmp_path, quantization=None).eval()
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        got = model(input_ids=ids).logits.double()
    expected = chatglm3_reference_logits(weights, config, ids)
    assert (got - expected).norm() / expected.norm() < 1e-5


def test_left_padded_batch_equals_unpadded(tiny_model):
    a = torch.tensor([[3001, 3003, 50, 60, 70, 80, 90]])
    b = torch.tensor([[3001, 3003, 100, 110]])
    pad = a.shape[1] - b.shape[1]
    batch = torch.cat([a, torch.cat([torch.zeros(1, pad, dtype=torch.long), b], 1)])
    mask = (torch.arange(a.shape[1]) >= torch.tensor([[0], [pad]])).long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = tiny_model(input_ids=batch, attention_mask=mask, position_ids=position_ids).logits
        alone_a = tiny_model(input_ids=a).logits
        alone_b = tiny_model(input_ids=b).logits
    torch.testing.assert_close(batched[0], alone_a[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched[1, pad:], alone_b[0], atol=1e-5, rtol=1e-4)


def test_greedy_generate_stops_on_eos(tiny_dir, tiny_model):
    tok = glmtune.load_tokenizer(tiny_dir)
    inputs = tok(["头痛怎么办？"], return_tensors="pt")
    kwargs = dict(max_new_tokens=20, do_sample=False, eos_token_id=glmtune.stop_token_ids(tok), pad_token_id=0)
    free = tiny_model.generate(**inputs, **kwargs)[0, inputs.input_ids.shape[1]:].tolist()
    assert len(free) == 20 and 2 not in free  # random weights never pick eos by themselves
    # Give eos a scaled copy of the first greedy token's lm_head row: eos now wins at that step.
    model = glmtune.load_model(tiny_dir, quantization=None).eval()
    with torch.no_grad():
        model.lm_head.weight[2] = model.lm_head.weight[free[0]] * 3
    stopped = model.generate(**inputs, **kwargs)[0, inputs.input_ids.shape[1]:].tolist()
    assert stopped == [2]


def test_original_bin_shards_load(tmp_path, tiny_dir, tiny_model):
    """The official repo ships pytorch_model-0000N-of-0000M.bin shards with an index."""
    weights = load_file(str(tiny_dir / "model.safetensors"))
    names = sorted(weights)
    half = len(names) // 2
    shards = {"pytorch_model-00001-of-00002.bin": names[:half], "pytorch_model-00002-of-00002.bin": names[half:]}
    for shard, keys in shards.items():
        torch.save({k: weights[k] for k in keys}, tmp_path / shard)
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    model = glmtune.load_model(tmp_path, quantization=None)
    for (name, p), (_, q) in zip(model.named_parameters(), tiny_model.named_parameters()):
        assert torch.equal(p, q), name


def test_native_glm_folder_loads(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "glm"
    again = glmtune.load_model(tmp_path, quantization=None)
    ids = torch.arange(3, 20)[None]
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, tiny_model(input_ids=ids).logits)


def test_nf4_load_on_cpu_runs(tiny_dir, tiny_model):
    pytest.importorskip("bitsandbytes")
    model = glmtune.load_model(tiny_dir, quantization="nf4")
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    ids = torch.arange(3, 20)[None]
    with torch.no_grad():
        quantized = model(input_ids=ids).logits.float()
        full = tiny_model(input_ids=ids).logits
    assert torch.isfinite(quantized).all()
    # 4-bit weights change the logits a little, not wholesale.
    assert (quantized - full).norm() / full.norm() < 0.2


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "no config.json"),
        (lambda d: (d / "config.json").write_text(json.dumps(original_config(100, **TINY_SHAPE))), "no weights"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "chatglm"})), "lacks padded_vocab_size"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "llama"})), "model_type is 'llama'"),
    ],
)
def test_bad_folders_raise_clearly(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(ModelLoadError, match=message):
        glmtune.load_model(tmp_path, quantization=None)


def test_missing_tokenizer_model_raises(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no tokenizer.model"):
        glmtune.load_tokenizer(tmp_path)


def test_nf4_without_bitsandbytes_raises(monkeypatch, tiny_dir):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ModelLoadError, match="needs bitsandbytes"):
        glmtune.load_model(tiny_dir, quantization="nf4")
