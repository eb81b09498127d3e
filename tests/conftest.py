"""Shared fixtures and helpers: the real ChatGLM3 files from ../shared (skipped when absent), the tiny
model, a small data file, one finished tiny run every test that only reads a run shares, and the
helpers the stages' tests have in common."""

import json
import re
import shutil
from pathlib import Path

import pytest
from transformers import TrainerCallback

from glmtune.core import cli
from glmtune.core.config import CompareConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README_chatglm_finetuning.md"
SHARED = REPO.parent / "shared"
CHATGLM3 = SHARED / "chatglm3"
REALDATA = SHARED / "realdata"

MEMINFO = """MemTotal:       25165824 kB
MemFree:          314572 kB
MemAvailable:     838860 kB
Cached:         20971520 kB
AnonPages:       2097152 kB
Shmem:            104857 kB
SReclaimable:    1048576 kB
SUnreclaim:       104857 kB
"""  # 24 GiB, 0.8 GiB "available": most of it page cache the kernel has not yet handed back


def readme_setup() -> list[str]:
    """The lines of the README's set-up block (its first bash block): the demo, then the test command."""
    text = README.read_text(encoding="utf-8")
    return re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).splitlines()


@pytest.fixture(scope="session")
def real_tokenizer_dir() -> Path:
    if not (CHATGLM3 / "tokenizer.model").is_file():
        pytest.skip("../shared/chatglm3/tokenizer.model is absent")
    return CHATGLM3


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is absent")
    return REALDATA


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from glmtune.model.tiny import ensure_tiny

    return ensure_tiny()


LINES = [
    "高血压能喝咖啡吗？ 男，50岁，血压控制在130/80左右。,少量饮用一般可以，注意监测血压，出现胸痛头晕及时就医。",
    "孩子发烧怎么办？ 孩子3岁，体温38.5度一天。,多喝水，物理降温，可按说明书用对乙酰氨基酚；精神差或抽搐立即就医。",
    "胃痛反酸是什么原因？ 女，35岁，饭后明显。,可能是胃食管反流，少食多餐，避免睡前进食，必要时做胃镜。",
    "失眠怎么调理？ 男，40岁，入睡困难两个月。,规律作息，睡前少用手机，避免咖啡因；持续不缓解请到睡眠门诊。",
    "咳嗽两周不好怎么办？ 女，28岁，干咳夜间重。,可能是感冒后咳嗽或咳嗽变异性哮喘，建议做胸片和肺功能检查。",
    "血糖偏高要吃药吗？ 男，45岁，空腹血糖6.5。,属于空腹血糖受损，先控制饮食、规律运动，三个月后复查糖化血红蛋白。",
    "腰痛腿麻是怎么回事？ 男，38岁，久坐后加重。,可能是腰椎间盘突出，注意休息，避免弯腰搬重物，必要时做核磁共振。",
    "皮肤起红疹很痒怎么办？ 女，25岁，吃海鲜后出现。,可能是荨麻疹，可按说明书口服氯雷他定；若喉头发紧呼吸困难立即急诊。",
] * 3  # 24 lines, each distinct after numbering below


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.txt"
    lines = [line.replace("？ ", f"（{i}）？ ", 1) for i, line in enumerate(LINES)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Departments beside it, as financial_data.txt has them (心血管内科, 儿科, 消化内科, ... per line)
    departments = ["心血管内科", "儿科", "消化内科", "神经内科", "呼吸内科", "内分泌科", "骨科", "皮肤科"] * 3
    path.with_name("train.departments.txt").write_text("\n".join(departments) + "\n", encoding="utf-8")
    return path


def tiny_config(data_file, out, *extra):
    """Training settings for a quick tiny-model run, parsed from flags as the script parses them."""
    config, _ = cli.parse_args(TrainConfig, "test", ["--model", "tiny", "--data", str(data_file), "--output-dir",
                                                     str(out), "--eval-ratio", "0.1", "--grad-accum", "2",
                                                     "--batch-size", "4", "--logging-steps", "1", *extra])
    return config


def quick(data_file, out, *extra):
    """One step and no eval split: a run whose only purpose is what it does to its folder."""
    return tiny_config(data_file, out, "--max-steps", "1", "--eval-ratio", "0", *extra)


@pytest.fixture(scope="session")
def trained(data_file, tmp_path_factory):
    """A finished tiny run: (output folder, the trained peft model)."""
    from glmtune.training.job import train

    out = tmp_path_factory.mktemp("run")
    job = train(tiny_config(data_file, out, "--learning-rate", "5e-3", "--max-steps", "12"))
    return out, job.model


def plain_peft(base, adapter):
    """The adapter in `adapter` on `base`, as plain peft loads it: the reference glmtune's own loading
    is checked against. peft probes a transformers attribute deprecated in 5.x (a FutureWarning that
    is not ours), silenced as around glmtune's own peft calls."""
    from peft import PeftModel

    from glmtune.core.quiet import quiet_peft

    with quiet_peft():
        return PeftModel.from_pretrained(base, str(adapter)).eval()


def copy_run(trained, tmp_path, name="run"):
    """A copy of the shared finished run, for a test that writes into its run folder."""
    copy = tmp_path / name
    shutil.copytree(trained[0], copy)
    return copy


class KillAtStep(TrainerCallback):
    """A kill -9 stand-in: the run stops dead right after step `step` (no checkpoint, no cleanup)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"  # torch.save, disk full

REPORT = [f"chatglm_comparison.{ext}" for ext in ("log", "json", "png", "html")]


def earlier_report(run):
    (run / "comparison").mkdir()
    for name in REPORT:
        (run / "comparison" / name).write_text(f"an earlier {name}", encoding="utf-8")


def compare_config(adapter, *extra):
    """Comparison settings for a quick run on two prompts, parsed from flags as the script parses them."""
    config, _ = cli.parse_args(CompareConfig, "test", ["--adapter", str(adapter), "--max-new-tokens", "4",
                                                       "--num-samples", "2", "--no-perplexity", *extra])
    return config


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# A system prompt longer than a short --max-length holds
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
