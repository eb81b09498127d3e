"""Faults in what a run is fed: a LoRA rank the model cannot hold, rows with nothing to learn,
comparisons on prompts the adapter saw in training, and legacy encodings read as the wrong one."""

import codecs
import json
import shutil

import pytest

from glmtune.model.loading import read_config
from glmtune.comparison.job import Comparison, Prompts, compare
from glmtune.core.config import CompareConfig
from glmtune.data.reading import Example, prompt_digest, read_dataset, read_prompt_digests
from glmtune.core.errors import ConfigError, DataError, RunDirError
from glmtune.training.job import FineTune
from glmtune.model.lora import check_rank, target_features
from glmtune.model.prompts import IGNORE_INDEX, tokenize_examples
from glmtune.training.runs import RunRecord
from glmtune.model.tokenizer import load_tokenizer

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


LONG_SYSTEM = "你是一名经验丰富的全科医生，回答要谨慎、具体，并提醒患者必要时就医。" * 20


def conversations(path, systems):
    """A JSONL file of one-exchange conversations, one per system prompt (None: no system turn)."""
    lines = []
    for i, system in enumerate(systems):
        turns = [{"role": "system", "content": system}] if system else []
        turns += [{"role": "user", "content": f"头痛（{i}）怎么办？"},
                  {"role": "assistant", "content": "多休息，多喝水。"}]
        lines.append(json.dumps({"messages": turns}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_system_prompt_past_max_length_is_refused_before_the_model_naming_rows_and_fix(tmp_path):
    data = conversations(tmp_path / "chats.jsonl", [LONG_SYSTEM] * 6)
    job = FineTune(tiny_config(data, tmp_path / "out", "--max-length", "64"))
    splits = job.split(job.prepare().dataset)
    with pytest.raises(DataError) as caught:
        job.tokenize(splits)
    message = str(caught.value)
    assert str(data) in message and "no training row keeps an answer token within --max-length 64" in message
    needed = int(message.split("raise --max-length to ")[1].split(",")[0])
    lines = [int(n) for n in message.split("(lines ")[1].split(":")[0].split(", ")]
    assert lines == [ex.line_no for ex in splits.train] and "shorten the system prompt" in message
    tok = load_tokenizer("tiny")
    examples = read_dataset(data).examples
    kept, stats = tokenize_examples(examples, tok, "chat", needed)  # the length it names keeps every row
    assert len(kept) == 6 and not stats.unanswered


def test_rows_without_an_answer_token_are_left_out_and_reported(tmp_path):
    data = conversations(tmp_path / "mixed.jsonl", [None, LONG_SYSTEM, None, LONG_SYSTEM, "简短回答。"])
    tok = load_tokenizer("tiny")
    dataset, stats = tokenize_examples(read_dataset(data).examples, tok, "chat", 64)
    assert len(dataset) == 3 and stats.count == 3 and stats.unanswered == [2, 4]
    assert all(any(label != IGNORE_INDEX for label in labels) for labels in dataset["labels"])
    assert max(dataset["length"]) <= 64
    assert "left out, no answer token within --max-length: 2 rows (lines 2, 4:" in "\n".join(stats.lines())


def comparison(adapter, tmp_path, **settings) -> Prompts:
    """The prompts a comparison of `adapter` chooses (no model loaded yet)."""
    config = CompareConfig(adapter=adapter, output=tmp_path / "comparison", **settings)
    config.validate()
    job = Comparison(config)
    return job.load_prompts(job.load_run())


def held_out(run) -> list[str]:
    return [ex.question for ex in read_dataset(run / RunRecord.load(run).resolved.eval_file).examples]


def training_questions(run, data_file) -> list[str]:
    evaluated = set(held_out(run))
    return [ex.question for ex in read_dataset(data_file).examples if ex.question not in evaluated]


def test_comparing_on_the_training_data_leaves_out_what_the_adapter_saw(trained, data_file, tmp_path):
    run, _ = trained
    config = CompareConfig(adapter=run, output=tmp_path / "comparison", data=data_file, max_new_tokens=2)
    config.validate()
    job = compare(config)
    said = "22 of 24 prompts were seen in training and are left out"
    assert [ex.question for ex, _ in job.prompts.items] == held_out(run)
    assert job.summary[0].startswith("VERDICT (2 prompts)") and f"  - {said}" in job.summary
    report = json.loads((job.output / "chatglm_comparison.json").read_text(encoding="utf-8"))
    assert report["settings"]["seen_in_training"] == said
    assert said in (job.output / "chatglm_comparison.log").read_text(encoding="utf-8")
    default = comparison(run, tmp_path / "eval")  # the eval split the run held out
    assert len(default.items) == 2 and default.overlap == "0 of 2 prompts were seen in training"


def test_only_prompts_seen_in_training_are_refused_and_ad_hoc_ones_flagged(trained, data_file, tmp_path):
    run, _ = trained
    seen = training_questions(run, data_file)
    only_seen = tmp_path / "seen.jsonl"
    only_seen.write_text("".join(json.dumps({"question": q, "answer": "好。"}, ensure_ascii=False) + "\n"
                                 for q in seen[:3]), encoding="utf-8")
    with pytest.raises(DataError, match=r"seen.jsonl: all 3 prompts were seen in training.*held-out prompts"):
        comparison(run, tmp_path, data=only_seen)
    job = comparison(run, tmp_path, prompt=["头痛怎么办？", f"  {seen[0]}\n"])  # whitespace aside, the same
    assert job.overlap == "1 of 2 prompts were seen in training and are kept but flagged"
    assert job.flagged == [f"--prompt 2 ({f'  {seen[0]}'[:30]}) was seen in training: its answers are not held-out"]


def test_a_run_from_before_the_prompt_hashes_is_compared_with_the_overlap_unchecked(trained, data_file, tmp_path):
    run, _ = trained
    old = tmp_path / "old-run"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("checkpoint-*", "comparison*", "train_prompts.sha256"))
    job = comparison(old, tmp_path, data=data_file)
    assert len(job.items) == 24 and "could not be checked" in job.overlap


def test_a_prompt_is_known_by_its_words_and_everything_before_its_question():
    turn = Example("没有。", "休息。", 1, (("第1天头痛。", "有发热吗？"),), "你是医生。")
    assert prompt_digest(turn) == prompt_digest(Example(" 没有。\n", "", 0, (("第1天头痛。 ", "有发热吗？"),), "你是医生。"))
    assert prompt_digest(turn) != prompt_digest(Example("没有。", "休息。", 2, (("第2天头痛。", "有发热吗？"),), "你是医生。"))
    assert prompt_digest(turn) != prompt_digest(Example("没有。", "休息。", 3, turn.history))  # no system prompt
    assert prompt_digest(Example("头 痛", "", 0)) != prompt_digest(Example("头痛", "", 0))  # words, not characters


def test_a_damaged_prompt_hash_file_is_named(tmp_path):
    (tmp_path / "train_prompts.sha256").write_text("0123abc\n", encoding="utf-8")
    with pytest.raises(RunDirError, match=r"train_prompts.sha256 is damaged; delete it"):
        read_prompt_digests(tmp_path)


# Traditional Chinese, as Taiwan and Hong Kong write it (and save it as Big5)
TRADITIONAL = [
    "高血壓能喝咖啡嗎？ 男，50歲，血壓控制在130/80左右。,少量飲用一般可以，注意監測血壓，出現胸痛頭暈及時就醫。",
    "孩子發燒怎麼辦？ 孩子3歲，體溫38.5度一天。,多喝水，物理降溫；精神差或抽搐立即就醫。",
    "胃痛反酸是什麼原因？ 女，35歲，飯後明顯。,可能是胃食管反流，少食多餐，避免睡前進食，必要時做胃鏡。",
    "失眠怎麼調理？ 男，40歲，入睡困難兩個月。,規律作息，睡前少用手機，避免咖啡因；持續不緩解請到睡眠門診。",
]


def pairs(data):
    return [(ex.question, ex.answer) for ex in data.examples]


@pytest.mark.parametrize("lines", [TRADITIONAL, TRADITIONAL[1:2]], ids=["four lines", "one line"])
def test_big5_reads_back_as_the_text_it_was_saved_from(tmp_path, lines):
    text = "\n".join(lines) + "\n"
    (tmp_path / "utf8.txt").write_text(text, encoding="utf-8")
    (tmp_path / "big5.txt").write_bytes(text.encode("big5"))
    data = read_dataset(tmp_path / "big5.txt")
    assert pairs(data) == pairs(read_dataset(tmp_path / "utf8.txt")) and not data.skipped
    assert data.encoding == "Big5" and "(qa-lines, Big5)" in data.report_lines()[0]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030"])
def test_chinese_in_utf8_and_gb_encodings_still_reads_as_it_did(tmp_path, encoding):
    from conftest import LINES

    for lines in (LINES, TRADITIONAL):  # GBK holds traditional characters too
        text = "\n".join(lines) + "\n"
        (tmp_path / "utf8.txt").write_text(text, encoding="utf-8")
        (tmp_path / "data.txt").write_bytes(text.encode(encoding))
        assert pairs(read_dataset(tmp_path / "data.txt")) == pairs(read_dataset(tmp_path / "utf8.txt"))


def test_real_gb18030_data_reads_as_gb18030(realdata_dir, tmp_path):
    path = realdata_dir / "toyhom_internal_medicine_excerpt.gb18030.csv"
    as_utf8 = tmp_path / "excerpt.csv"
    as_utf8.write_text(path.read_bytes().decode("gb18030"), encoding="utf-8")
    data = read_dataset(path)
    assert data.encoding == "GB18030" and pairs(data) == pairs(read_dataset(as_utf8)) and len(data.examples) > 200
    edge = (realdata_dir / "edge_cases.txt").read_text(encoding="utf-8")
    (tmp_path / "edge.txt").write_bytes(edge.encode("gb18030"))
    (tmp_path / "edge.utf8.txt").write_text(edge, encoding="utf-8")
    assert pairs(read_dataset(tmp_path / "edge.txt")) == pairs(read_dataset(tmp_path / "edge.utf8.txt"))


def test_an_encoding_that_cannot_be_told_is_refused_with_how_to_convert(tmp_path):
    # EUC-KR hangul are GB2312 hanzi byte for byte: either reading is all common characters
    korean = tmp_path / "korean.txt"
    korean.write_bytes("두통이 심해요. 병원에 가야 하나요?,네, 바로 진료를 받으세요.\n".encode("euc_kr"))
    with pytest.raises(DataError, match=r"korean.txt: not UTF-8, and no legacy encoding clearly fits.*"
                                        r"likely GB18030 or CP949\): iconv -f ENCODING -t UTF-8 .*korean.txt > .*korean.txt.utf8"):
        read_dataset(korean)


@pytest.mark.parametrize("first", ["头痛？ 经常头痛怎么办", "楠宝发烧三天不退怎么办？ 楠宝2岁"])
def test_gbk_whose_first_characters_are_also_utf8_is_read_as_gbk(tmp_path, first):
    # 头痛 in GBK (CD B7 CD B4) are two valid UTF-8 characters (Greek), 楠宝 one CJK character and more
    lines = f"{first},注意休息。\n胃痛反酸是什么原因？ 饭后明显,少食多餐。\n"
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes(lines.encode("gbk"))
    data = read_dataset(gbk)
    assert data.encoding == "GB18030" and [ex.answer for ex in data.examples] == ["注意休息。", "少食多餐。"]
    damaged = tmp_path / "damaged.txt"  # Chinese in UTF-8, then one byte that is not: still named as damage
    damaged.write_bytes(lines.encode("utf-8") + b"\xa3\n")
    with pytest.raises(DataError, match=r"damaged.txt:3: invalid UTF-8 byte 0xa3 after valid UTF-8 text"):
        read_dataset(damaged)


def test_utf16_and_utf32_with_their_bom_are_read(tmp_path):
    text = "头痛怎么办？ 经常头痛,注意休息。\n"
    for encoding, name, mark in (("utf-16", "UTF-16", b""), ("utf-16-be", "UTF-16", codecs.BOM_UTF16_BE),
                                 ("utf-32", "UTF-32", b"")):  # UTF-32's mark begins with UTF-16's
        path = tmp_path / f"{encoding}.txt"
        path.write_bytes(mark + text.encode(encoding))
        data = read_dataset(path)
        assert (data.encoding, data.lines_read, [ex.answer for ex in data.examples]) == (name, 1, ["注意休息。"])
