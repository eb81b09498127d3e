"""The README and the docs pages: every page linked, every Python snippet runs as written, CI runs the
test command the README gives, the flag reference is generated, every command line they show is one
the command accepts, and every folder those commands write into the repo is git-ignored."""

import contextlib
import io
import re
import shlex
import subprocess

import glmtune.__main__ as command
from glmtune.core import cli

from conftest import README, REPO, readme_setup

PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
SCRIPTS = {"chatglm_finetuning.py": "train", "chatglm_finetuning_tst.py": "compare"}
MENTIONS = re.compile(r"\bglmtune(\.export)?(?![\w./])|chatglm_finetuning(_tst)?\.py")


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_readme_links_every_docs_page_and_each_link_resolves():
    linked = re.findall(r"\]\((docs/[^)]+)\)", readme())
    assert sorted(set(linked)) == sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))
    assert all((REPO / link).is_file() for link in linked)


def test_python_snippets_in_the_docs_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snippets = [snippet for page in PAGES
                for snippet in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, "docs snippet", "exec"), {})


def test_ci_runs_the_readme_test_command():
    test_command = next(line for line in readme_setup() if "pytest" in line).split("#")[0].strip()
    assert test_command in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_every_install_of_the_tool_in_the_docs_holds_to_the_pinned_versions():
    # One install resolving the newest releases and a later one pinning older ones would change the
    # libraries under a run the first trained (peft then warns on each command that loads its adapter).
    installs = [(page.name, line) for page in PAGES for line in page.read_text(encoding="utf-8").splitlines()
                if "pip install" in line and " -e " in line]
    assert len(installs) >= 2
    for page, line in installs:
        assert re.search(r" -[cr] requirements\.txt ", line), f"{page}: {line}"


def test_the_flag_reference_is_up_to_date():
    written = (REPO / "docs" / "flags.md").read_text(encoding="utf-8")
    assert written == command.flag_reference(), "stale: run python -m glmtune --flag-reference > docs/flags.md"


def test_the_readme_and_the_help_give_one_demo_time():
    said = re.search(r"CPU demo \(tiny random model, (about (?:a|[\d.]+) minutes? on \d cores)", command.TRAIN).group(1)
    assert f"The demo takes {said} " in readme()


def test_the_readme_is_one_screen_of_reading():
    assert len(readme().splitlines()) <= 150


def shown_commands(text: str, page: str) -> list[tuple[str, str]]:
    """(where, text) of every shell line of a page: the lines of its code blocks (but Python and
    YAML), with continuations joined, and its inline code."""
    found = []
    for language, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if language not in ("python", "yaml"):
            found += [(page, line) for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return found + [(page, span.replace("\n", " ")) for span in re.findall(r"`([^`]+)`", prose)]


def simple_commands(line: str) -> list[list[str]]:
    """A shell line's simple commands (split at |, &&, ;), as argv lists, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("|", "&&", ";", "||", ">", ">>"):
            commands.append(current)
            current = [] if token != ">" else ["<redirect>"]  # what follows > is a file, not a command
        else:
            current.append(token)
    return [c for c in [*commands, current] if c and c[0] != "<redirect>"]


def ours(argv: list[str]) -> tuple[str, list[str]] | None:
    """(subcommand, its arguments) when argv runs glmtune, one of the scripts or python -m
    glmtune.export, directly or under torchrun / accelerate launch; None for any other program."""
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # CUDA_VISIBLE_DEVICES=1 ...
        argv = argv[1:]
    if argv[:1] in (["torchrun"], ["accelerate"]):  # the launcher's own options, up to the program
        start = next((i for i, token in enumerate(argv) if token == "-m" or token.endswith(".py")), None)
        argv = argv[start:] if start is not None else []
    elif argv[:1] == ["python"]:
        argv = argv[1:]
    if argv[:2] == ["-m", "glmtune.export"]:
        return "export", argv[2:]
    if argv[:2] == ["-m", "glmtune"]:
        argv = argv[1:]
    if argv[:1] == ["glmtune"] and len(argv) > 1 and not argv[1].isupper():  # `glmtune COMMAND --help`: a pattern
        return argv[1], argv[2:]
    if argv and argv[0] in SCRIPTS:
        return SCRIPTS[argv[0]], argv[1:]
    return None


def refusal(name: str, args: list[str]) -> str | None:
    """Why the command would refuse these arguments at parsing (types, choices, unknown flags), or None."""
    args = [a for a in args if a != "..."]  # `glmtune train ...`: the flags left out
    if name.startswith("-"):
        return None if name in ("-h", "--help", "--flag-reference") and not args else f"{name} {args}"
    if name not in command.COMMANDS:
        return f"no subcommand {name!r}"
    if {"-h", "--help"} & set(args):
        return None
    entry = command.COMMANDS[name]
    parser = cli.build_parser(entry.config, name, prog=f"glmtune {name}", only=entry.only)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args(args)
        except SystemExit:
            return err.getvalue().strip()
    return None


def test_every_command_line_in_the_readme_docs_and_help_is_accepted():
    checked, refused = [], []
    for where, line in shown_lines():
        if not MENTIONS.search(line):  # prose in a plain block (the comparison log's excerpt) is no shell
            continue
        for argv in simple_commands(line):
            found = ours(argv)
            if found:
                checked.append((where, *found))
                reason = refusal(*found)
                if reason:
                    refused.append(f"{where}: {line}\n    {reason}")
    assert not refused, "\n".join(refused)
    readme = {name for where, name, _ in checked if where == README.name}
    assert readme >= set(command.COMMANDS), readme  # the README shows every subcommand
    assert len(checked) > 60  # the extraction finds the pages' commands (76 today)


def test_the_command_line_check_can_fail():
    """A wrong flag, value or subcommand in a page is caught, under a launcher and after a pipe too."""
    page = ("```bash\nprintf 'x\\n' | glmtune chat --adapter out --num-samples 5\n"
            "torchrun --nproc_per_node 2 -m glmtune train --lr-scheduler sawtooth\n```\n"
            "Run `python chatglm_finetuning_tst.py --adapterr out` or `glmtune tune`.\n")
    found = [ours(argv) for _, line in shown_commands(page, "page") if MENTIONS.search(line)
             for argv in simple_commands(line)]
    assert [f for f in found if f] == [("chat", ["--adapter", "out", "--num-samples", "5"]),
                                       ("train", ["--lr-scheduler", "sawtooth"]),
                                       ("compare", ["--adapterr", "out"]), ("tune", [])]
    assert all(refusal(*f) for f in found if f)


def shown_lines() -> list[tuple[str, str]]:
    """(where, line) of every shell line the README, the docs pages and the subcommands' --help show."""
    lines = [item for page in PAGES for item in shown_commands(page.read_text(encoding="utf-8"), page.name)]
    return lines + [(f"glmtune {name} --help", line) for name, entry in command.COMMANDS.items()
                    for line in entry.help.splitlines() if line.startswith("    ")]


def test_the_folders_shown_commands_write_into_the_repo_are_git_ignored():
    """Following a page from the repo root leaves `git status` clean: a run or export folder it names
    (`out`, `chatglm3-medical-merged`) is ignored; placeholders (DIR) and absolute paths are not ours."""
    folders = set()
    for _, line in shown_lines():
        for argv in simple_commands(line) if MENTIONS.search(line) else []:
            found = ours(argv)
            args = found[1] if found else []
            folders |= {value for flag, value in zip(args, args[1:])
                        if flag in ("--output-dir", "--output") and not value.isupper() and not value.startswith("/")}
    assert {"out", "out-merged", "chatglm3-medical-lora", "chatglm3-medical-merged"} <= folders, folders
    shown = sorted(f"{folder}/" for folder in folders)
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *shown], capture_output=True, text=True, cwd=REPO)
    assert sorted(ignored.stdout.split()) == shown, ignored.stderr
