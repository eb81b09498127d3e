"""Export for deployment: the tiny run's adapter merged into its base (fp32 here, so merged and
unmerged agree to rounding), written natively and in ChatGLM3's original layout, loaded back by plain
transformers in a process that never imports glmtune, and every refusal before anything is touched."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import GlmForCausalLM

import glmtune
from glmtune.core import cli, files
from glmtune.core.config import ExportConfig
from glmtune.core.errors import ConfigError, ModelLoadError, RunDirError
from glmtune.core.folders import LOCK, scratch_for
from glmtune.export.job import MANIFEST, deployment_tokenizer, export, main
from glmtune.model.loading import read_config
from glmtune.model.lora import load_adapter
from glmtune.model.tokenizer import build_tokenizer
from glmtune.training.runs import RunRecord

from conftest import REPO


CONVERSATIONS = [
    [{"role": "user", "content": "高血压能喝咖啡吗？"}],
    [{"role": "system", "content": "你是一名医生，回答要简短。"},
     {"role": "user", "content": "孩子发烧怎么办？ 孩子3岁，体温38.5度。"},
     {"role": "assistant", "content": "多喝水，物理降温。"},
     {"role": "user", "content": "还要注意什么？"}],
    [{"role": "user", "content": " leading space, two  spaces,\nnew lines\n\nand people with an esophagus"},
     {"role": "assistant", "content": ""},
     {"role": "observation", "content": '{"temperature": 38.5}'}],
]
# What the deployed model runs on, in a process with no glmtune: ids from the chat template, greedy
# answers (stopping where generation_config.json says), and the first conversation's logits.
PLAIN_TRANSFORMERS = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, conversations = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
ids = [tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False) for c in conversations]
answers = [model.generate(torch.tensor([i]), max_new_tokens=12, do_sample=False)[0, len(i):].tolist() for i in ids]
with torch.no_grad():
    logits = model(torch.tensor([ids[0]])).logits[0].tolist()
print(json.dumps({"ids": ids, "answers": answers, "logits": logits, "class": type(model).__name__,
                  "glmtune": sorted(m for m in sys.modules if m.startswith("glmtune"))}))
"""


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    """One fp32 export per layout of the finished tiny run: (run folder, native result, chatglm result)."""
    run, _ = trained
    root = tmp_path_factory.mktemp("exports")
    native = export(ExportConfig(adapter=run, output=root / "native", dtype="fp32"))
    chatglm = export(ExportConfig(adapter=run, output=root / "chatglm", format="chatglm", dtype="fp32"))
    return run, native, chatglm


@pytest.fixture(scope="module")
def unmerged(trained):
    """The same base in fp32 with the adapter attached, not merged: what the export must reproduce."""
    run, _ = trained
    return load_adapter(glmtune.load_model("tiny", quantization=None), run, "tiny").eval()


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            found |= {name: f.get_tensor(name) for name in f.keys()}
    return found


def test_native_export_runs_in_plain_transformers_as_the_unmerged_adapter(exports, unmerged):
    run, native, _ = exports
    done = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(native.output), json.dumps(CONVERSATIONS)],
                          capture_output=True, text=True, timeout=120, cwd=native.output)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = json.loads(done.stdout)
    assert plain["class"] == "GlmForCausalLM" and plain["glmtune"] == []
    tok = glmtune.load_tokenizer(run)
    assert plain["ids"] == [glmtune.chat_ids(tok, c) for c in CONVERSATIONS]
    expected = [unmerged.generate(input_ids=torch.tensor([i]), max_new_tokens=12, do_sample=False,
                                  eos_token_id=glmtune.stop_token_ids(tok))[0, len(i):].tolist() for i in plain["ids"]]
    assert plain["answers"] == expected
    with torch.no_grad():
        reference = unmerged(input_ids=torch.tensor([plain["ids"][0]])).logits[0]
    torch.testing.assert_close(torch.tensor(plain["logits"]), reference, rtol=0, atol=1e-4)


def test_native_export_has_native_names_and_deployment_configs(exports):
    run, native, _ = exports
    folder = native.output
    with torch.device("meta"):
        skeleton = GlmForCausalLM(read_config(folder))
    assert set(tensors(folder)) == set(skeleton.state_dict())  # not the ChatGLM3 names glmtune loads from
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "glm"
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == glmtune.stop_token_ids(glmtune.load_tokenizer(run))
    assert generation["pad_token_id"] == 0
    assert sorted(native.files) == sorted(p.name for p in folder.iterdir())
    assert native.bytes == sum(p.stat().st_size for p in folder.iterdir())
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~files.umask() for p in folder.iterdir())
    assert set(native.seconds) == {"load", "merge", "write", "total"} and native.parameters > 10**6
    # transformers 4.x's spelling of the same settings, beside 5's
    rope = config["rope_parameters"]
    assert config["rope_theta"] == rope["rope_theta"]
    assert config["partial_rotary_factor"] == rope["partial_rotary_factor"]
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_the_deploy_page_loading_snippet_runs_on_an_export(exports, capsys):
    _, native, _ = exports
    deploy = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    snippet = re.search(r"```\n(from transformers import .*?)```", deploy, flags=re.S).group(1)
    exec(compile(snippet.replace('"chatglm3-medical-merged"', repr(str(native.output))), "README", "exec"), {})
    assert capsys.readouterr().out.strip()


def test_chat_template_reproduces_chat_ids_with_the_real_vocabulary(real_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    deployment_tokenizer(build_tokenizer(real_tokenizer_dir / "tokenizer.model")).save_pretrained(tmp_path)
    exported, tok = AutoTokenizer.from_pretrained(tmp_path), build_tokenizer(real_tokenizer_dir / "tokenizer.model")
    for conversation in CONVERSATIONS:
        for prompt in (True, False):
            assert (exported.apply_chat_template(conversation, add_generation_prompt=prompt, return_dict=False)
                    == glmtune.chat_ids(tok, conversation, add_generation_prompt=prompt))
    # Text stays text where a word holds "sop"/"eop"; a message holding a control token's own text gets
    # the control token (the trade-off the module notes): the template's tokens are text too.
    assert exported("people esophagus").input_ids == tok("people esophagus").input_ids
    typed = exported.apply_chat_template([{"role": "user", "content": "a <|user|> b"}], return_dict=False)
    assert typed.count(tok.convert_tokens_to_ids("<|user|>")) == 2
    with pytest.raises(Exception, match="unknown chat role 'tool'; ChatGLM3 knows system, user"):
        exported.apply_chat_template([{"role": "tool", "content": "{}"}])


def test_chatglm_export_is_the_original_layout(exports, tiny_dir):
    _, _, chatglm = exports
    folder = chatglm.output
    original, written = tensors(tiny_dir), tensors(folder)
    assert {k: (v.shape, v.dtype) for k, v in written.items()} == {k: (v.shape, v.dtype) for k, v in original.items()}
    merged = {k for k in original if not torch.equal(original[k], written[k])}
    assert merged == {k for k in original if k.endswith(("query_key_value.weight", "self_attention.dense.weight",
                                                          "dense_h_to_4h.weight", "dense_4h_to_h.weight"))}
    config, base = (json.loads((d / "config.json").read_text()) for d in (folder, tiny_dir))
    assert {k: v for k, v in config.items() if k != "auto_map"} == base
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_chatglm.ChatGLMForConditionalGeneration"
    assert (folder / "tokenizer.model").read_bytes() == (tiny_dir / "tokenizer.model").read_bytes()
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "ChatGLMTokenizer"


def test_chatglm_export_loads_as_the_native_export(exports):
    from transformers import AutoModelForCausalLM

    _, native, chatglm = exports
    ids = torch.randint(3, 3000, (1, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        original_layout = glmtune.load_model(chatglm.output, quantization=None).eval()(ids).logits
        native_layout = AutoModelForCausalLM.from_pretrained(native.output).eval()(ids).logits
    torch.testing.assert_close(original_layout, native_layout, rtol=0, atol=1e-6)


def run_cli(capsys, *argv) -> tuple[int, str]:
    config, options = cli.parse_args(ExportConfig, "test", list(argv))
    with pytest.raises(SystemExit) as exit_:
        cli.run(main, config, debug=options.debug)
    return exit_.value.code, capsys.readouterr().err


def test_non_empty_target_is_refused_and_overwrite_replaces_only_an_export(exports, capsys, tmp_path):
    run, native, _ = exports
    target = tmp_path / "target"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):  # another model: the names an export writes, not its files
        (target / name).write_text("theirs")
    code, err = run_cli(capsys, "--adapter", str(run), "--output", str(target))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "is not empty (config.json, model.safetensors); choose another --output, or pass --overwrite" in err
    with pytest.raises(RunDirError, match=r"holds files no export wrote \(config.json, model.safetensors\)"):
        export(ExportConfig(adapter=run, output=target, overwrite=True))
    assert all(p.read_text() == "theirs" for p in target.iterdir())

    shutil.rmtree(target)
    shutil.copytree(native.output, target)
    replaced = export(ExportConfig(adapter=run, output=target, overwrite=True))  # the default: bf16
    assert sorted(p.name for p in target.iterdir()) == sorted(native.files) == sorted(replaced.files)
    assert {t.dtype for t in tensors(target).values()} == {torch.bfloat16}
    assert json.loads((target / "config.json").read_text())["dtype"] == "bfloat16"
    manifest = json.loads((target / MANIFEST).read_text())
    assert (manifest["dtype"], manifest["adapter"], manifest["run"]["data_sha256"]) == (
        "bf16", str(run.resolve()), RunRecord.load(run).data_sha256)


def test_adapter_that_does_not_fit_the_base_is_named_in_one_line(exports, capsys, tmp_path):
    from glmtune.model.tiny import TINY_SHAPE, original_config, random_original_weights, write_original_checkpoint

    run, _, _ = exports
    config = original_config(3000, **{**TINY_SHAPE, "hidden_size": 192})
    write_original_checkpoint(tmp_path / "other", config, random_original_weights(config))
    code, err = run_cli(capsys, "--adapter", str(run), "--output", str(tmp_path / "out"), "--base-model",
                        str(tmp_path / "other"), "--dtype", "fp32")
    assert code == 1 and "Traceback" not in err  # above the error line: the base's loading bar
    assert err.strip().splitlines()[-1].startswith(f"error: the adapter in {run} does not fit {tmp_path / 'other'} (")
    assert not (tmp_path / "out").exists()


def test_low_disk_space_is_refused_before_loading(exports, monkeypatch, tmp_path):
    run, _, _ = exports
    monkeypatch.setattr(files, "free_bytes", lambda path: 10**6)
    with pytest.raises(RunDirError, match=r"the export needs 6\d\.\d MiB and the disk has 1\.0 MiB free"):
        export(ExportConfig(adapter=run, output=tmp_path / "out", dtype="fp16"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("moment", ["while writing", "while moving files into an empty folder"])
def test_a_killed_export_never_looks_complete(exports, monkeypatch, tmp_path, moment):
    import glmtune.export.job as exporting

    run, _, _ = exports
    out = tmp_path / "out"
    scratch = scratch_for(out)  # the shared protocol's scratch, beside the folder
    scratch.mkdir()
    (scratch / "model.safetensors").write_bytes(b"left by a kill -9")  # no live holder: cleared and reused
    if moment == "while writing":
        def killed(model, tokenizer, folder):
            assert folder == scratch and list(folder.iterdir()) == [folder / LOCK]
            (folder / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt

        monkeypatch.setattr(exporting, "write_native", killed)
    else:
        out.mkdir()  # where the user's shell stands: it stays the same folder, filled file by file

        def replace(source, target, real=os.replace):
            if Path(target) == out / "config.json":  # the last file: everything else is in place
                assert (out / "model.safetensors").is_file() and (out / MANIFEST).is_file()
                raise KeyboardInterrupt
            real(source, target)

        monkeypatch.setattr(exporting.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        export(ExportConfig(adapter=run, output=out, dtype="fp32"))
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if out.exists() else [])
    assert not out.exists() or list(out.iterdir()) == []


def test_a_failed_overwrite_keeps_the_earlier_export(exports, monkeypatch, tmp_path):
    import glmtune.export.job as exporting

    run, native, _ = exports
    target = tmp_path / "target"
    shutil.copytree(native.output, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def full(model, tokenizer, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exporting, "write_native", full)
    with pytest.raises(OSError):
        export(ExportConfig(adapter=run, output=target, dtype="fp32", overwrite=True))
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # untouched, no scratch left


def test_unfinished_run_and_bad_settings_are_refused(exports, tmp_path):
    run, native, _ = exports
    with pytest.raises(ConfigError, match="is the training run's folder"):
        ExportConfig(adapter=run, output=run).validate()
    assert ExportConfig(adapter=run, format="chatglm").target() == run.resolve().with_name(f"{run.name}-chatglm")
    earlier = shutil.copytree(native.output, tmp_path / "earlier")  # an earlier export, used as a base
    with pytest.raises(ConfigError, match="is the base model's folder"):
        export(ExportConfig(adapter=run, output=earlier, base_model=str(earlier), overwrite=True))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished, ignore=shutil.ignore_patterns("checkpoint-*"))
    record = json.loads((unfinished / "run_config.json").read_text())
    (unfinished / "run_config.json").write_text(json.dumps({**record, "state": "running"}))
    with pytest.raises(RunDirError, match="has not finished"):
        export(ExportConfig(adapter=unfinished, output=tmp_path / "out"))
    with pytest.raises(ModelLoadError, match="not a ChatGLM3 checkpoint in the original layout"):
        export(ExportConfig(adapter=run, output=tmp_path / "out", format="chatglm", base_model=str(native.output)))
    assert not (tmp_path / "out").exists()


def test_flag_errors_come_before_heavy_imports(tmp_path):
    code = ("import sys\nfrom glmtune.core import cli\nfrom glmtune.core.config import ExportConfig\nimport glmtune.export.job\n"
            f"try:\n    cli.parse_args(ExportConfig, 't', ['--adapter', {str(tmp_path / 'nope')!r}])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.stdout.strip() == "[]", done.stderr
    assert done.stderr.strip().endswith("nope: no such folder; pass the --output-dir of a training run (--help lists "
                                        "the settings)")


@pytest.fixture(scope="module")
def trained_template_export(trained, tmp_path_factory):
    from glmtune.core.config import ExportConfig
    from glmtune.export.job import export

    run, _ = trained
    return run, export(ExportConfig(adapter=run, output=tmp_path_factory.mktemp("export") / "native", dtype="fp32",
                                    chat_template="trained"))


def test_the_trained_template_builds_the_prompts_training_used(trained_template_export):
    from transformers import AutoTokenizer

    from glmtune.export.job import summary
    from glmtune.model.prompts import prompt_ids
    from glmtune.model.tokenizer import load_tokenizer

    run, result = trained_template_export
    exported, training = AutoTokenizer.from_pretrained(result.output), load_tokenizer(run)
    for question in ("高血压能喝咖啡吗？ 男，50岁。", " leading space,  two spaces\nand a line"):
        assert exported.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_dict=False) == prompt_ids(training, question, "glm3")
    with pytest.raises(Exception, match="trained on the \\[Round 1\\] layout, which holds one user question"):
        exported.apply_chat_template([{"role": "system", "content": "你是医生"}, {"role": "user", "content": "q"}])
    assert [line for line in summary(result) if line.startswith("template")] == [
        "template   the glm3 layout this adapter was trained on ('[Round 1] 问：... 答：'), one question per "
        "conversation (--chat-template trained)"]


def test_a_glm3_adapter_exported_with_the_chat_template_says_so(trained_template_export):
    from dataclasses import replace

    from glmtune.export.job import summary

    run, result = trained_template_export
    template = next(line for line in summary(replace(result, template="chat")) if line.startswith("template"))
    assert template == ("template   ChatGLM3's chat layout (<|user|> ... <|assistant|>); this adapter was trained on "
                        "the glm3 layout ('[Round 1] 问：... 答：'), which it does not reproduce: --chat-template "
                        "trained installs that one")

    from glmtune.core.config import ExportConfig
    from glmtune.core.errors import ConfigError

    with pytest.raises(ConfigError, match="trained is for --format native"):  # chatglm keeps the base's tokenizer
        ExportConfig(adapter=run, format="chatglm", chat_template="trained").validate()


def test_export_publishes_whole_into_a_missing_or_empty_folder_and_leaves_no_lock(exports, tmp_path):
    run, native, _ = exports
    assert sorted(p.name for p in native.output.parent.iterdir()) == ["chatglm", "native"]  # no scratch beside
    assert LOCK not in native.files and not (native.output / LOCK).exists()
    here = tmp_path / "here"
    here.mkdir()
    inode = here.stat().st_ino
    result = export(ExportConfig(adapter=run, output=here, dtype="fp32"))
    assert here.stat().st_ino == inode and sorted(p.name for p in here.iterdir()) == sorted(result.files)
    assert json.loads((here / MANIFEST).read_text())["files"] == sorted(set(result.files) - {MANIFEST})



def test_a_second_export_into_the_same_folder_is_turned_away(exports, tmp_path):
    from glmtune.core import folders

    run, _, _ = exports
    out = tmp_path / "out"
    _, held = folders.reserve(out, "exporting")  # another export, writing now
    with pytest.raises(RunDirError, match=f"another process is exporting to {out}; wait for it to finish"):
        export(ExportConfig(adapter=run, output=out, dtype="fp32"))
    assert scratch_for(out).is_dir()  # the other export's scratch is left to it
    held.release()



def test_overwrite_with_no_room_for_both_deletes_the_earlier_export_first(exports, monkeypatch, tmp_path, capsys):
    run, native, _ = exports
    target = shutil.copytree(native.output, tmp_path / "target")
    before = sorted(p.name for p in target.iterdir())
    monkeypatch.setattr(files, "free_bytes", lambda path: 1)  # no room even once the earlier export is gone
    with pytest.raises(RunDirError, match="the export needs"):
        export(ExportConfig(adapter=run, output=target, dtype="fp32", overwrite=True))
    assert sorted(p.name for p in target.iterdir()) == before  # refused before anything was deleted
    monkeypatch.setattr(files, "free_bytes", lambda path: 64 * 2**20)  # room once it is gone
    result = export(ExportConfig(adapter=run, output=target, dtype="fp32", overwrite=True))
    assert f"deleting the earlier export in {target} first" in capsys.readouterr().out
    assert sorted(p.name for p in target.iterdir()) == sorted(result.files)  # no .replacing-* left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
