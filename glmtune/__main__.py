"""`glmtune`: the command line, one subcommand per thing a user does (train, compare, chat, export).

Each subcommand's flags are its config's fields (glmtune/core/config.py), checked before torch is
imported; its job is imported only then. `chatglm_finetuning.py`, `chatglm_finetuning_tst.py` and
`python -m glmtune.export` are the same commands under their original names.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from .core import cli
from .core.config import CompareConfig, ExportConfig, TrainConfig

TRAIN = """QLoRA fine-tuning of ChatGLM3-6B on medical Q&A, on transformers 5 with no remote code.

CPU demo (tiny random model, about a minute on 2 cores, training and comparison):
    glmtune train --model tiny --output-dir out
GPU, the real model (4-bit NF4 base, LoRA r=16 on q/k/v/o and both MLP projections):
    glmtune train --data financial_data.txt --output-dir chatglm3-medical-lora
Settings from a YAML file (flags override it), TensorBoard logging, conversation data:
    glmtune train --config train.yaml --report-to tensorboard
    glmtune train --data dialogues.jsonl --output-dir dialogue-lora
Continue an interrupted run (Ctrl-C saves a checkpoint first):
    glmtune train --output-dir chatglm3-medical-lora --resume
Several GPUs, data parallel (the effective batch stays 16 with --batch-size auto):
    torchrun --nproc_per_node 2 -m glmtune train --output-dir chatglm3-medical-lora
Then compare base and fine-tuned answers:
    glmtune compare --adapter chatglm3-medical-lora
The original script takes the same flags: python chatglm_finetuning.py --model tiny --output-dir out
"""

COMPARE = """Did the fine-tune help? Base vs fine-tuned ChatGLM3 on held-out prompts, measured.

After a training run (its --output-dir holds the adapter, run_config.json and the eval split):
    glmtune compare --adapter out
Other prompts, ad-hoc questions, sampling:
    glmtune compare --adapter out --data my_eval.jsonl --num-samples 50
    glmtune compare --adapter out --prompt "高血压患者能喝咖啡吗？" --prompt "孩子发烧怎么办？"
    glmtune compare --adapter out --do-sample --temperature 0.8 --seed 1
    glmtune compare --adapter out --quantization nf4 --compile off   # the slower, smaller path
    torchrun --nproc_per_node 2 -m glmtune compare --adapter out    # prompts split over 2 GPUs
Prints the verdict (did the fine-tune help, with 95% intervals) and the metric table, and writes them
with every answer to ADAPTER/comparison/ (numbered comparison-2, ... on a rerun; --output, --overwrite):
chatglm_comparison.log, .json (every number), .png (chart) and .html (open it in a browser).
Talk with the models instead: glmtune chat --adapter out (--chat here does the same).
The original script takes the same flags: python chatglm_finetuning_tst.py --adapter out
"""

CHAT = """Talk with the fine-tuned model: streamed, multi-turn, in ChatGLM3's chat layout.

    glmtune chat --adapter out
    glmtune chat --adapter out --do-sample --temperature 0.8 --max-new-tokens 512
/base and /tuned switch the side that answers, /both answers with both, /reset forgets the
conversation, /exit (or end of input) ends it. From a pipe it reads one turn per line:
    printf '头痛怎么办？\\n吃什么药？\\n' | glmtune chat --adapter out
The original script does the same: python chatglm_finetuning_tst.py --adapter out --chat
"""

EXPORT = """Export a training run for deployment: its adapter merged into a 16-bit copy of the base model.

    glmtune export --adapter chatglm3-medical-lora --output chatglm3-medical-merged
    glmtune export --adapter chatglm3-medical-lora --output chatglm3-medical-chatglm --format chatglm
    glmtune export --adapter out --output out-merged --dtype fp32      # the CPU demo's tiny run
    glmtune export --adapter RUN --output DIR --base-model /data/models/chatglm3-6b --overwrite
    glmtune export --adapter out --chat-template trained   # a glm3 run's own '问：…答：' prompt as chat template
    glmtune export --adapter chatglm3-medical-lora --output chatglm3-medical-gguf --format gguf --gguf-type q4_0
native (default): transformers' GlmForCausalLM with ChatGLM3's chat template and stop tokens;
AutoModelForCausalLM and AutoTokenizer load it with no remote code, `vllm serve DIR` serves it.
chatglm: ChatGLM3's original layout, for its official demos and chatglm.cpp.
gguf: one GGUF file (bf16, q8_0 or q4_0) for llama.cpp, and a Modelfile beside it for `ollama create`.
The merge runs on the GPU when the model fits in its free memory, else on the CPU; --overwrite deletes
only the files an earlier export's glmtune_export.json lists. More in docs/deploy.md.
The original command takes the same flags: python -m glmtune.export --adapter out --output out-merged
"""


def _train(config: TrainConfig, options: cli.RunOptions) -> None:
    from .training.job import main  # loads torch: only once the flags are checked

    main(config, options)


def _compare(config: CompareConfig, options: cli.RunOptions) -> None:
    from .comparison.job import main

    main(config)


def _export(config: ExportConfig, options: cli.RunOptions) -> None:
    from .export.job import main

    main(config)


@dataclass(frozen=True)
class Command:
    config: type                        # the settings dataclass its flags come from
    help: str                           # first line: what it does; the rest: examples, under the flags
    job: Callable[..., None]            # (config, options)
    only: tuple[str, ...] | None = None  # the fields it takes as flags (None: all)
    fixed: dict = field(default_factory=dict)  # settings the command itself implies


COMMANDS = {
    "train": Command(TrainConfig, TRAIN, _train),
    "compare": Command(CompareConfig, COMPARE, _compare),
    # The comparison's --chat: the settings that a conversation uses, none of the prompt, batch or report ones.
    "chat": Command(CompareConfig, CHAT, _compare, only=("adapter", "base_model", "quantization", "max_new_tokens",
                                                         "do_sample", "temperature", "top_p", "seed"),
                    fixed={"chat": True}),
    "export": Command(ExportConfig, EXPORT, _export),
}


def run_command(name: str, argv: list[str] | None = None, prog: str | None = None) -> None:
    """One subcommand: its flags parsed and checked (exit 2 on a bad one), then its job behind the
    error boundary. argv None: this process's command line; prog None: the script's file name."""
    command = COMMANDS[name]
    description, _, examples = command.help.partition("\n\n")
    config, options = cli.parse_args(command.config, description, argv, examples, prog=prog, only=command.only,
                                     fixed=command.fixed)
    cli.run(command.job, config, options, debug=options.debug)


FLAG_REFERENCE = "--flag-reference"


def overview(prog: str) -> str:
    lines = [f"usage: {prog} {{{','.join(COMMANDS)}}} [flags]", "",
             "ChatGLM3-6B QLoRA fine-tuning on transformers 5, with no remote code.", ""]
    lines += [f"  {name:<8} {command.help.splitlines()[0]}" for name, command in COMMANDS.items()]
    lines += ["", f"{prog} COMMAND --help lists a command's flags and examples.",
              f"{prog} {FLAG_REFERENCE} prints every command's flags as Markdown (docs/flags.md)."]
    return "\n".join(lines)


def flag_reference() -> str:
    """docs/flags.md: every subcommand's flags, generated from the config declarations."""
    lines = ["# Flags", "",
             f"Generated by `python -m glmtune {FLAG_REFERENCE} > docs/flags.md` from the settings declared in",
             "`glmtune/core/config.py` (a test fails when this page is stale); `--help` shows the same. Every flag is",
             "also accepted with underscores (`--output_dir`), and every setting as a key of a `--config` YAML file.",
             "The original commands take the same flags: `python chatglm_finetuning.py` as `train`,",
             "`python chatglm_finetuning_tst.py` as `compare` (and `--chat` as `chat`), `python -m glmtune.export`",
             "as `export`."]
    for name, command in COMMANDS.items():
        lines += ["", f"## glmtune {name}", "", command.help.splitlines()[0],
                  *cli.reference(command.config, command.only)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "glmtune") -> None:
    if argv is None:
        cli.use_console()
        argv = sys.argv[1:]
    first = argv[0] if argv else None
    if first in COMMANDS:
        run_command(first, argv[1:], f"{prog} {first}")
    elif first in ("-h", "--help"):
        print(overview(prog))
    elif first == FLAG_REFERENCE:
        print(flag_reference(), end="")
    else:
        problem = "a command is missing" if first is None else f"unknown command {first!r}"
        print(f"{prog}: error: {problem}; use one of: {', '.join(COMMANDS)} (--help says what each does)",
              file=sys.stderr)
        sys.exit(cli.EXIT_USAGE)


if __name__ == "__main__":
    main(prog="python -m glmtune")
