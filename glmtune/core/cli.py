"""The command line of both scripts: flags made from a config dataclass, `--config FILE.yaml`, and
the error boundary that turns a user's problem into one line instead of a traceback.

Precedence: dataclass default < YAML file < flag. Every field is `--kebab-case`, and also accepted in
HF's `--snake_case` spelling and under its aliases (config.py), so commands and YAML files written
for HF Trainer, TRL or LLaMA-Factory mostly work as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import io
import os
import sys
import typing
from pathlib import Path

import yaml

from . import distributed
from .config import base_type, convert, from_text
from .errors import ConfigError, Diverged, GlmtuneError, Interrupted, TrainingError
from .files import FULL, write_failure

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def names(f: dataclasses.Field) -> list[str]:
    spellings = [f.name, *f.metadata["aliases"]]
    return list(dict.fromkeys(option for s in spellings for option in (flag(s), "--" + s)))


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad setting is one line: the usage block would bury it (26 lines of flags)."""

    def error(self, message: str):
        # Every process of a launch parses the same flags: rank 0 alone says what is wrong.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (--help lists the settings)\n" if distributed.is_main()
                  else None)


def settings(cls, only=None) -> list[dataclasses.Field]:
    """The config's fields a command takes: all, or those named in only (`glmtune chat` takes the
    comparison's decoding settings, none of its prompt or report settings)."""
    fields = dataclasses.fields(cls)
    unknown = set(only or ()) - {f.name for f in fields}
    assert not unknown, f"{cls.__name__} has no settings {sorted(unknown)}"  # a typo would drop a flag silently
    return [f for f in fields if only is None or f.name in only]


def default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# Every command's own options, beside its config's fields: (flag, metavar, help).
RUN_OPTIONS = (
    ("--config", "FILE.yaml", "read settings from a YAML file (keys as the flags, either spelling); flags override it"),
    ("--debug", None, "show the full traceback of an error"),
)


def build_parser(cls, description: str, epilog: str | None = None, prog: str | None = None,
                 only=None) -> argparse.ArgumentParser:
    """One option per field (defaults shown, values left unset unless given: SUPPRESS lets a YAML
    file fill what the command line does not)."""
    parser = OneLineParser(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in settings(cls, only):
        meta = f.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        group = groups[meta["group"]]
        kind, optional = base_type(cls, f)
        value = default(f)
        shown = "" if value in (None, False, []) else f" (default: {value})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=meta["help"] + shown)
        if kind is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(kind) is list:  # repeatable, and with nargs "+" several values after one flag too
            item = typing.get_args(kind)[0]
            kwargs |= dict(action="extend" if meta["nargs"] == "+" else "append", nargs=meta["nargs"],
                           metavar=meta["metavar"], type=lambda text, item=item: from_text(item, text, False))
        else:
            def typed(text, kind=kind, optional=optional, normalize=meta["normalize"] or (lambda v: v)):
                return from_text(kind, normalize(text), optional)

            choices = meta["choices"]
            kwargs |= dict(type=typed, choices=choices, nargs=meta["nargs"], const=meta["const"],
                           metavar="{" + ",".join(choices) + "}" if choices else meta["metavar"])
        group.add_argument(*names(f), **kwargs)
        for option, const in meta["consts"].items():
            group.add_argument("--" + option, dest=f.name, action="store_const", const=const, default=argparse.SUPPRESS,
                               help=f"same as {flag(f.name)} {const}")
    extra = parser.add_argument_group("run")
    for option, metavar, text in RUN_OPTIONS:
        if metavar:
            extra.add_argument(option, type=Path, metavar=metavar, help=text)
        else:
            extra.add_argument(option, action="store_true", help=text)
    return parser


def reference(cls, only=None) -> list[str]:
    """The flags build_parser makes, as Markdown tables by group: every spelling, the value it takes
    (type or choices), the default and the help, from the same field declarations."""
    def cell(text) -> str:
        return str(text).replace("|", "\\|")

    lines, group = [], None
    for f in settings(cls, only):
        meta = f.metadata
        if meta["group"] != group:
            group = meta["group"]
            lines += ["", f"**{group}**", "", "| flag | value | default | what it sets |", "| --- | --- | --- | --- |"]
        kind, optional = base_type(cls, f)
        if kind is bool:
            value = "switch"
        elif typing.get_origin(kind) is list:
            value = f"{meta['metavar']} [{meta['metavar']} ...]" if meta["nargs"] == "+" else f"{meta['metavar']}, repeatable"
        else:
            value = " | ".join(meta["choices"]) if meta["choices"] else meta["metavar"] or kind.__name__.lower()
            if meta["nargs"] == "?":
                value = f"[{value}]"
            elif optional:
                value += " or none"
        # The underscore spelling of every flag goes without saying (the page says it once).
        spellings = [f"`{option}`" for option in dict.fromkeys([flag(f.name), *("--" + a for a in meta["aliases"])])]
        spellings += [f"`--{option}` (= {flag(f.name)} {const})" for option, const in meta["consts"].items()]
        shown = default(f)
        shown = "" if shown in (None, False, []) else f"`{shown}`"
        lines.append(f"| {'<br>'.join(spellings)} | {cell(value)} | {shown} | {cell(meta['help'])} |")
    lines += ["", "**run**", "", "| flag | value | default | what it sets |", "| --- | --- | --- | --- |"]
    lines += [f"| `{option}` | {metavar or 'switch'} | | {cell(text)} |" for option, metavar, text in RUN_OPTIONS]
    return lines


# A settings file is a few dozen lines; anything far larger is not one (and would be slow to parse).
MAX_YAML_BYTES = 64 * 1024


class RefusedYAML(yaml.MarkedYAMLError):
    """Valid YAML that a settings file must not hold."""


class SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what a settings file never needs and a hostile one abuses: an
    alias (`*name`) can expand a few lines into gigabytes (a "billion laughs"), and a key given twice
    would silently keep only its last value."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise RefusedYAML(problem=f"*{event.anchor}: aliases are not accepted in a settings file; write the "
                                      "value out", problem_mark=event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise RefusedYAML(problem=f"{key.value!r} is given twice; keep one", problem_mark=key.start_mark)
                seen.add(key.value)
        return super().construct_mapping(node, deep=deep)


def read_yaml(cls, path: Path, only=None) -> dict:
    """Settings from a YAML file, typed; ConfigError naming the file and key for anything wrong."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise ConfigError("config", f"{path}: larger than {MAX_YAML_BYTES // 1024} KiB, which no settings file "
                                        "is; give a YAML file of 'key: value' lines")
        raw = yaml.load(data.decode("utf-8"), Loader=SettingsLoader)
    except FileNotFoundError:
        raise ConfigError("config", f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("config", f"{path}: cannot read it ({err})") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f":{where.line + 1}" if where else ""
        problem = getattr(err, "problem", err)
        if isinstance(err, RefusedYAML):
            raise ConfigError("config", f"{path}{line}: {problem}") from None
        raise ConfigError("config", f"{path}{line}: not valid YAML ({problem})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{path}: expected 'key: value' lines, found a {type(raw).__name__}")
    spelling, consts = {}, {}
    for f in settings(cls, only):
        for name in (f.name, *f.metadata["aliases"]):
            spelling[name] = spelling[name.replace("_", "-")] = f
        consts |= {option: (f.name, value) for option, value in f.metadata["consts"].items()}
    values, given_as = {}, {}
    for key, value in raw.items():
        key = str(key)
        if key in consts:  # bf16: true and the like
            if value is True:
                name = consts[key][0]
                _given_once(path, given_as, name, key)
                values[name] = consts[key][1]
            continue
        if key not in spelling:
            raise ConfigError("config", f"{path}: unknown setting {key!r}; see --help for the settings")
        f = spelling[key]
        _given_once(path, given_as, f.name, key)
        try:
            values[f.name] = convert(cls, f, value)
        except ValueError as err:
            raise ConfigError("config", f"{path}: {key}: {err}") from None
    return values


def _given_once(path: Path, given_as: dict, name: str, key: str) -> None:
    """Two spellings of one setting (lr and learning_rate, lora-r and lora_r, bf16 and precision):
    refused rather than one silently winning."""
    if name in given_as:
        raise ConfigError("config", f"{path}: {given_as[name]!r} and {key!r} both set {flag(name)}; keep one")
    given_as[name] = key


class Console(io.TextIOWrapper):
    """This process's stdout or stderr, safe for whatever shows it: text its encoding cannot hold
    is escaped (\\u9ad8 on an ASCII terminal) rather than raising, and once its reader has gone (a
    pipe into `head -1`), the rest goes to os.devnull, so a run goes on and finishes instead of
    stopping on BrokenPipeError with its record saying 'running'."""

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            super().flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        # On the descriptor itself: every later write, a library's included, and the flush at exit
        # (whose failure would make the exit status 120) then succeed.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.fileno())
        os.close(devnull)


def use_console() -> None:
    """Make sys.stdout and sys.stderr Consoles, sharing the buffers of the streams Python opened
    (only those: a stream someone else installed is theirs to keep)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is getattr(sys, f"__{name}__") and isinstance(stream, io.TextIOWrapper):
            setattr(sys, name, Console(stream.buffer, encoding=stream.encoding, errors="backslashreplace",
                                       line_buffering=stream.line_buffering, write_through=stream.write_through))


def parse_args(cls, description: str, argv: list[str] | None = None, epilog: str | None = None, *,
               prog: str | None = None, only=None, fixed: dict | None = None):
    """Flags (and --config) -> a validated config, plus the run options (--config path, --debug).
    Exits with status 2 and a one-line message, as argparse does, for any bad setting. Parsing the
    process's own command line (argv None) makes its console safe first (`use_console`): --help
    already prints Chinese examples. prog names the command in its usage line (default: the script's
    file name); only limits the flags to those fields; fixed sets what the command itself implies."""
    if argv is None:
        use_console()
    parser = build_parser(cls, description, epilog, prog, only)
    namespace = vars(parser.parse_args(argv))
    config_file, debug = namespace.pop("config"), namespace.pop("debug")
    try:
        values = read_yaml(cls, config_file, only) if config_file else {}
        values |= namespace
        config = cls(**values | (fixed or {}))
        config.validate()
    except ConfigError as err:
        parser.error(message(err))
    return config, RunOptions(config_file, debug)


@dataclasses.dataclass
class RunOptions:
    config_file: Path | None
    debug: bool


def message(err: BaseException) -> str:
    if isinstance(err, ConfigError) and err.field and err.field != "config":
        return f"{flag(err.field)} {err}"
    return str(err)


def run(main, *args, debug: bool = False) -> None:
    """Call main(*args); turn the errors a user can act on into one line on stderr and an exit code.
    With debug, re-raise for the full traceback."""
    try:
        main(*args)
    except Exception as err:
        if debug:
            raise
        explained = explain(err)
        if explained is None:  # a bug: its traceback is what helps
            raise
        code, line, own = explained
        # With several processes, rank 0 speaks for all: the others speak only of what befell them
        # alone; anything from the shared inputs they would repeat word for word.
        if line and (distributed.is_main() or own):
            _say(line)
        distributed.stop(cleanly=not distributed.lost_peer(err))
        sys.exit(code)
    except KeyboardInterrupt:
        if debug:
            raise
        if distributed.is_main():
            _say(INTERRUPTED)
        sys.exit(EXIT_INTERRUPTED)
    distributed.stop()


INTERRUPTED = "\ninterrupted; nothing half-written was kept"


def explain(err: Exception) -> tuple[int, str | None, bool] | None:
    """(exit code, the line to print, whether it befell this process alone: its GPU's memory, its
    disk, a peer lost) for an error a user can act on; None for a bug."""
    if isinstance(err, distributed.Elsewhere):
        return EXIT_ERROR, None, False
    if _caused_by_ctrl_c(err):  # e.g. an import cut short, which Python reports as an ImportError
        return EXIT_INTERRUPTED, INTERRUPTED, False
    if isinstance(err, Interrupted):
        return EXIT_INTERRUPTED, f"\n{err}", False
    if isinstance(err, GlmtuneError):
        code = EXIT_USAGE if isinstance(err, ConfigError) else EXIT_ERROR
        return code, f"error: {message(err)}", isinstance(err, TrainingError) and not isinstance(err, Diverged)
    if isinstance(err, OSError):
        return EXIT_ERROR, f"error: {os_error(err)}", True
    if distributed.lost_peer(err):
        return EXIT_ERROR, ("\nerror: another process of this run stopped (its own line, or the launcher's report, "
                            "says why); --resume continues from the last checkpoint"), True
    reason = write_failure(err)  # torch and safetensors report a full disk as their own error types
    if reason is not None:
        return EXIT_ERROR, f"error: a write failed: {reason}; free some space and run the same command again", True
    return None


def _caused_by_ctrl_c(err: BaseException) -> bool:
    while err is not None:
        if isinstance(err, KeyboardInterrupt):
            return True
        err = err.__cause__ or err.__context__
    return False


def _say(line: str) -> None:
    """On stderr; from a process other than rank 0, with its rank."""
    where = "" if distributed.is_main() else f"[rank {distributed.rank()}] "
    body = line.lstrip("\n")
    print(line[:len(line) - len(body)] + where + body, file=sys.stderr)


def os_error(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    if err.errno in FULL:
        return f"{where}no space left on the device; free some space and run the same command again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "read-only file system" if err.errno == errno.EROFS else "permission denied"
        return f"{where}{what}; choose a folder you can write to"
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"{where}{err.strerror}; check the path"
    return f"{where}{err.strerror or err}"
