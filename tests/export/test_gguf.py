"""GGUF export, read back with the gguf package's own reader: llama.cpp's chatglm architecture, the
tensors in its layout and types, ChatGLM3's vocabulary, stops and chat template, the Ollama Modelfile,
and the refusals. (That llama.cpp itself runs the file as transformers runs the merged model is
bench/bench_gguf.py's part: it needs llama.cpp built, which CI cannot afford.)"""

import json
import shutil

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize, quantize

import glmtune
from glmtune.core import cli, files
from glmtune.core.config import ExportConfig
from glmtune.core.errors import ConfigError, ModelLoadError, RunDirError
from glmtune.export.gguf import read_vocabulary
from glmtune.export.job import CHAT_TEMPLATE, MANIFEST, chat_template, export, main
from glmtune.model.lora import load_adapter
from glmtune.model.tokenizer import SPECIAL_TOKENS, build_tokenizer

NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE = 1, 2, 3, 5, 6


@pytest.fixture(scope="module")
def ggufs(trained, tmp_path_factory):
    """The tiny run merged in fp32 and exported as bf16 and as q4_0: (run, {type: result})."""
    run, _ = trained
    root = tmp_path_factory.mktemp("gguf")
    return run, {t: export(ExportConfig(adapter=run, output=root / t, format="gguf", gguf_type=t, dtype="fp32"))
                 for t in ("bf16", "q4_0")}


@pytest.fixture(scope="module")
def merged(trained):
    """The tiny run's adapter merged into the fp32 base by peft: what the GGUF must hold."""
    run, _ = trained
    base = glmtune.load_model("tiny", quantization=None)
    return {k: v.detach() for k, v in load_adapter(base, run, "tiny").merge_and_unload().state_dict().items()}


def read(result) -> GGUFReader:
    return GGUFReader(next(result.output.glob("*.gguf")))


def value(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def test_gguf_is_llama_cpps_chatglm_architecture_with_the_models_shape(ggufs):
    _, results = ggufs
    reader = read(results["bf16"])
    assert value(reader, "general.architecture") == "chatglm"
    # tiny: hidden 128, 4 heads of 32 (2 key/value groups), MLP 256, 2 layers, 2048 positions
    assert {k: value(reader, f"chatglm.{k}") for k in (
        "context_length", "embedding_length", "feed_forward_length", "block_count", "attention.head_count",
        "attention.head_count_kv", "rope.dimension_count", "rope.freq_base")} == {
        "context_length": 2048, "embedding_length": 128, "feed_forward_length": 256, "block_count": 2,
        "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 16, "rope.freq_base": 10000}
    assert value(reader, "chatglm.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert value(reader, "general.file_type") == 32  # llama.cpp's MOSTLY_BF16
    assert value(read(results["q4_0"]), "general.file_type") == 2  # MOSTLY_Q4_0


def test_tensors_are_in_llama_cpps_layout_and_types(ggufs):
    _, results = ggufs
    layer = {"attn_norm.weight": [128], "attn_qkv.weight": [128, 256], "attn_qkv.bias": [256],
             "attn_output.weight": [128, 128], "ffn_norm.weight": [128], "ffn_up.weight": [128, 512],
             "ffn_down.weight": [256, 128]}
    expected = {"token_embd.weight": [128, 3072], "output_norm.weight": [128], "output.weight": [128, 3072],
                **{f"blk.{i}.{k}": v for i in range(2) for k, v in layer.items()}}  # ggml order: row length first
    for gguf_type, result in results.items():
        tensors = {t.name: t for t in read(result).tensors}
        assert {n: [int(d) for d in t.shape] for n, t in tensors.items()} == expected
        types = {n: t.tensor_type for n, t in tensors.items()}
        vectors = {n for n, shape in expected.items() if len(shape) == 1}  # norms and the qkv bias
        assert {types[n] for n in vectors} == {Q.F32}
        if gguf_type == "bf16":
            assert {types[n] for n in set(expected) - vectors} == {Q.BF16}
        else:  # the output layer keeps more bits, as llama-quantize gives it
            assert types.pop("output.weight") == Q.Q8_0
            assert {types[n] for n in set(types) - vectors} == {Q.Q4_0}


def test_tensors_hold_the_merged_weights_with_q_k_v_and_the_mlp_halves_fused(ggufs, merged):
    _, results = ggufs
    p = "model.layers.1."
    native = {  # llama.cpp's tensor: the merged model's, fused as ChatGLM3 fuses them (q heads, k, v)
        "token_embd.weight": merged["model.embed_tokens.weight"], "output.weight": merged["lm_head.weight"],
        "output_norm.weight": merged["model.norm.weight"],
        "blk.1.attn_qkv.weight": torch.cat([merged[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]),
        "blk.1.attn_qkv.bias": torch.cat([merged[p + f"self_attn.{x}_proj.bias"] for x in "qkv"]),
        "blk.1.attn_output.weight": merged[p + "self_attn.o_proj.weight"],
        "blk.1.ffn_up.weight": merged[p + "mlp.gate_up_proj.weight"],  # gate (through silu) first, then up
        "blk.1.ffn_down.weight": merged[p + "mlp.down_proj.weight"],
        "blk.1.attn_norm.weight": merged[p + "input_layernorm.weight"],
    }
    for gguf_type, result in results.items():
        tensors = {t.name: t for t in read(result).tensors}
        for name, weight in native.items():
            t = tensors[name]
            stored = dequantize(t.data, t.tensor_type).reshape(weight.shape)
            w = weight.float().numpy()
            if t.tensor_type == Q.F32:
                expected = w
            elif t.tensor_type == Q.BF16:
                expected = weight.to(torch.bfloat16).float().numpy()
            else:  # the bytes gguf's own quantizer writes for these weights
                expected = dequantize(quantize(w, t.tensor_type), t.tensor_type).reshape(weight.shape)
            np.testing.assert_array_equal(stored, expected, err_msg=f"{gguf_type} {name}")


def test_vocabulary_stops_and_chat_template_are_chatglm3s(ggufs, tiny_dir):
    import sentencepiece as spm

    run, results = ggufs
    reader = read(results["q4_0"])
    tokens = list(value(reader, "tokenizer.ggml.tokens"))
    scores, types = value(reader, "tokenizer.ggml.scores"), value(reader, "tokenizer.ggml.token_type")
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    pieces = sp.vocab_size()
    assert value(reader, "tokenizer.ggml.model") == "llama"  # llama.cpp's SentencePiece tokenizer
    assert len(tokens) == len(scores) == len(types) == 3072  # one per embedding row
    assert tokens[:pieces] == [sp.id_to_piece(i) for i in range(pieces)]
    assert scores[:pieces] == pytest.approx([sp.get_score(i) for i in range(pieces)])
    assert types[:3] == [UNKNOWN, CONTROL, CONTROL]  # <unk> <s> </s>
    assert {types[i] for i in range(pieces) if sp.is_byte(i)} == {BYTE} and types[sp.piece_to_id("▁")] == NORMAL
    tok = glmtune.load_tokenizer(run)
    assert tokens[pieces:pieces + 9] == list(SPECIAL_TOKENS)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(pieces, pieces + 9))
    assert set(types[pieces:pieces + 9]) == {CONTROL}
    assert tokens[pieces + 9:] == [f"[PAD{i}]" for i in range(pieces + 9, 3072)] and set(types[pieces + 9:]) == {UNUSED}
    stops = {k: value(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")}
    assert sorted(stops.values()) == glmtune.stop_token_ids(tok)  # eos, <|user|>, <|observation|>
    assert (tokens[stops["eot"]], tokens[stops["eom"]]) == ("<|user|>", "<|observation|>")
    assert value(reader, "tokenizer.ggml.add_bos_token") is False  # the template writes [gMASK]sop
    assert value(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert value(reader, "general.sampling.temp") == pytest.approx(0.8)
    assert value(reader, "general.sampling.top_p") == pytest.approx(0.8)


def test_the_real_vocabulary_puts_chatglm3s_control_tokens_at_their_ids(real_tokenizer_dir):
    vocabulary = read_vocabulary(real_tokenizer_dir, 65024)
    tok = build_tokenizer(real_tokenizer_dir / "tokenizer.model")
    assert len(vocabulary.tokens) == 65024 and vocabulary.pieces == 64789
    assert {t: vocabulary.tokens.index(t) for t in SPECIAL_TOKENS} == {t: tok.convert_tokens_to_ids(t)
                                                                       for t in SPECIAL_TOKENS}
    assert vocabulary.id("<|user|>") == 64795 and vocabulary.id("<|observation|>") == 64797
    assert vocabulary.tokens[13] == "<0x0A>" and vocabulary.types[13] == BYTE  # "\n", llama.cpp's newline
    assert vocabulary.tokens[-1] == "[PAD65023]" and vocabulary.types[-1] == UNUSED


def test_modelfile_builds_chatglm3s_layout_and_stops(ggufs):
    run, results = ggufs
    result = results["q4_0"]
    name = f"{run.name}-q4_0.gguf"  # the run's name and the type
    assert sorted(result.files) == sorted(["Modelfile", name, MANIFEST])
    assert (result.output / "Modelfile").read_text(encoding="utf-8") == (
        f'FROM ./{name}\n'
        'TEMPLATE """[gMASK]sop{{ range .Messages }}<|{{ if eq .Role "tool" }}observation{{ else }}{{ .Role }}{{ end }}|>\n'
        '{{ if .Content }} {{ .Content }}{{ end }}{{ end }}<|assistant|>"""\n'
        'PARAMETER stop "<|user|>"\n'
        'PARAMETER stop "<|observation|>"\n'
        'PARAMETER temperature 0.8\n'
        'PARAMETER top_p 0.8\n'
        'PARAMETER repeat_penalty 1.0\n'
        'PARAMETER num_ctx 2048\n')
    manifest = json.loads((result.output / MANIFEST).read_text())
    assert (manifest["format"], manifest["gguf_type"], manifest["files"]) == ("gguf", "q4_0", ["Modelfile", name])
    assert result.bytes == sum(p.stat().st_size for p in result.output.iterdir())


def test_the_trained_layout_goes_into_the_gguf_and_the_modelfile(trained, tmp_path):
    run, _ = trained
    result = export(ExportConfig(adapter=run, output=tmp_path / "out", format="gguf", chat_template="trained"))
    assert value(read(result), "tokenizer.chat_template") == chat_template("glm3")
    template = (result.output / "Modelfile").read_text(encoding="utf-8").split('"""')[1]
    assert template == ('{{ $question := "" }}{{ range .Messages }}{{ if eq .Role "user" }}{{ $question = .Content }}'
                        '{{ end }}{{ end }}[gMASK]sop[Round 1]\n\n问：{{ $question }}\n\n答：')


def test_a_32k_base_keeps_its_rope_ratio_and_context(trained, tiny_dir, tmp_path):
    run, _ = trained
    base = shutil.copytree(tiny_dir, tmp_path / "base-32k")
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "rope_ratio": 50, "seq_length": 32768}))
    result = export(ExportConfig(adapter=run, output=tmp_path / "out", format="gguf", base_model=str(base)))
    reader = read(result)
    assert value(reader, "chatglm.rope.freq_base") == 500000  # 10,000 x rope_ratio, as ChatGLM3-6B-32K computes it
    assert value(reader, "chatglm.context_length") == 32768
    assert "PARAMETER num_ctx 32768" in (result.output / "Modelfile").read_text(encoding="utf-8")


def test_overwrite_replaces_an_export_of_another_type(ggufs, tmp_path):
    run, results = ggufs
    target = shutil.copytree(results["bf16"].output, tmp_path / "target")
    replaced = export(ExportConfig(adapter=run, output=target, format="gguf", gguf_type="q4_0", overwrite=True))
    assert sorted(p.name for p in target.iterdir()) == sorted(replaced.files) == sorted(results["q4_0"].files)
    assert ExportConfig(adapter=run, format="gguf").target() == run.resolve().with_name(f"{run.name}-gguf")


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        config, options = cli.parse_args(ExportConfig, "test", list(argv))
    except SystemExit as exit_:  # argparse's own refusals
        return exit_.code, capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.run(main, config, debug=options.debug)
    return exit_.value.code, capsys.readouterr().err


def test_an_unknown_type_is_one_line(ggufs, capsys, tmp_path):
    run, _ = ggufs
    code, err = run_cli(capsys, "--adapter", str(run), "--format", "gguf", "--gguf-type", "q5_k")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "argument --gguf-type/--gguf_type: invalid choice: 'q5_k' (choose from 'bf16', 'q8_0', 'q4_0')" in err
    with pytest.raises(ConfigError, match="must be one of bf16, q8_0, q4_0, not 'q5_k'"):  # a YAML file's value
        ExportConfig(adapter=run, format="gguf", gguf_type="q5_k").validate()
    code, err = run_cli(capsys, "--adapter", str(run), "--output", str(tmp_path / "out"), "--gguf-type", "q4_0")
    assert code == 2 and err.strip().endswith("error: --gguf-type q4_0 is for --format gguf; add --format gguf, or drop "
                                              "--gguf-type (--help lists the settings)")
    assert not (tmp_path / "out").exists()


def test_an_unfinished_run_is_one_line(ggufs, capsys, tmp_path):
    run, _ = ggufs
    unfinished = shutil.copytree(run, tmp_path / "unfinished", ignore=shutil.ignore_patterns("checkpoint-*"))
    record = json.loads((unfinished / "run_config.json").read_text())
    (unfinished / "run_config.json").write_text(json.dumps({**record, "state": "running"}))
    code, err = run_cli(capsys, "--adapter", str(unfinished), "--output", str(tmp_path / "out"), "--format", "gguf")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: the run in {unfinished} has not finished (its record says running); finish it with "
                          "--resume, then export it")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("base", ["qwen", "glm4-tokenizer", "no-tokenizer-model"])
def test_a_base_that_is_not_chatglm3_is_one_line(ggufs, capsys, tiny_dir, tmp_path, base):
    run, _ = ggufs
    folder = shutil.copytree(tiny_dir, tmp_path / base)
    if base == "qwen":
        (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 128}))
        expected = f"error: {folder / 'config.json'}: model_type is 'qwen2'; this tool fine-tunes ChatGLM3"
    elif base == "glm4-tokenizer":  # GLM-4 also says model_type chatglm; its tokenizer.model is tiktoken's
        (folder / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")
        expected = f"error: {folder / 'tokenizer.model'} is not a SentencePiece model ("
    else:  # a native export as base: the GGUF's vocabulary needs the SentencePiece file
        (folder / "tokenizer.model").unlink()
        expected = f"error: {folder}: no tokenizer.model, ChatGLM3's SentencePiece file"
    code, err = run_cli(capsys, "--adapter", str(run), "--output", str(tmp_path / "out"), "--format", "gguf",
                        "--base-model", str(folder))
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith(expected), err
    assert not (tmp_path / "out").exists()


def test_no_disk_space_is_refused_before_loading_with_the_files_size(ggufs, monkeypatch, tmp_path):
    run, results = ggufs
    monkeypatch.setattr(files, "free_bytes", lambda path: 10**6)
    # q4_0 of the tiny model: 0.8 MiB of tensors, room for the vocabulary and settings, and the margin
    with pytest.raises(RunDirError, match=r"the export needs 80\.\d MiB and the disk has 1\.0 MiB free"):
        export(ExportConfig(adapter=run, output=tmp_path / "out", format="gguf", gguf_type="q4_0"))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_leaves_nothing_and_keeps_the_earlier_export(ggufs, monkeypatch, tmp_path):
    import glmtune.export.gguf as writing

    run, results = ggufs
    target = shutil.copytree(results["bf16"].output, tmp_path / "target")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def full(model, vocabulary, template, path, gguf_type, name):
        path.write_bytes(b"GGUF half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writing, "write_gguf", full)
    with pytest.raises(OSError, match="No space left"):
        export(ExportConfig(adapter=run, output=target, format="gguf", gguf_type="q8_0", overwrite=True))
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no scratch left beside it
