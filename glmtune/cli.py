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
import sys
import types
import typing
from pathlib import Path

from .errors import ConfigError, GlmtuneError, Interrupted

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(cls, f: dataclasses.Field):
    """The field's type without `| None`, and whether None is allowed."""
    hint = typing.get_type_hints(cls)[f.name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return hint, False


def _from_text(kind, text: str, optional: bool):
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is Path:
        return Path(text).expanduser()
    return text


def convert(cls, f: dataclasses.Field, value):
    """A value from a YAML file or run_config.json, typed as the field is; ValueError if it cannot be."""
    kind, optional = _base_type(cls, f)
    if value is None:
        if optional:
            return None
        raise ValueError("may not be empty")
    if f.name == "gradient_checkpointing" and isinstance(value, bool):  # HF writes it as a boolean
        return "on" if value else "off"
    if f.name == "resume" and isinstance(value, bool):
        return "last" if value else None
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {value!r}")
        return value
    if typing.get_origin(kind) is list:
        values = value if isinstance(value, list) else [value]
        return [str(v) for v in values]
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise ValueError(f"must be a {kind.__name__}, not {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"must be a whole number, not {value!r}")
    return _from_text(kind, str(int(value) if kind is int and isinstance(value, float) else value), optional)


def _names(f: dataclasses.Field) -> list[str]:
    spellings = [f.name, *f.metadata.get("aliases", ())]
    names = []
    for s in spellings:
        for option in (flag(s), "--" + s):
            if option not in names:
                names.append(option)
    return names


def _gradient_checkpointing(text: str) -> str:
    """HF's boolean spellings of --gradient_checkpointing, next to our auto/on/off."""
    return {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}.get(text.lower(), text)


def build_parser(cls, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """One option per field (defaults shown, values left unset unless given: SUPPRESS lets a YAML
    file fill what the command line does not)."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kind, optional = _base_type(cls, f)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = "" if default in (None, False, []) else f" (default: {default})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=meta["help"] + shown)
        if kind is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(kind) is list:
            kwargs |= dict(action="append", metavar=meta["metavar"])
        else:
            def typed(text, kind=kind, optional=optional):
                return _from_text(kind, text, optional)

            kwargs |= dict(type=_gradient_checkpointing if f.name == "gradient_checkpointing" else typed,
                           choices=meta["choices"], nargs=meta["nargs"], const=meta["const"],
                           metavar=meta["metavar"])
            if meta["choices"]:
                kwargs["metavar"] = "{" + ",".join(meta["choices"]) + "}"
        group.add_argument(*_names(f), **kwargs)
        for option, value in meta["consts"].items():
            group.add_argument("--" + option, dest=f.name, action="store_const", const=value, default=argparse.SUPPRESS,
                               help=f"same as {flag(f.name)} {value}")
    extra = parser.add_argument_group("run")
    extra.add_argument("--config", type=Path, metavar="FILE.yaml",
                       help="read settings from a YAML file (keys as the flags, either spelling); flags override it")
    extra.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def read_yaml(cls, path: Path) -> dict:
    """Settings from a YAML file, typed; ConfigError naming the file and key for anything wrong."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config", f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("config", f"{path}: cannot read it ({err})") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f":{where.line + 1}" if where else ""
        raise ConfigError("config", f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{path}: expected 'key: value' lines, found a {type(raw).__name__}")
    spelling = {}
    for f in dataclasses.fields(cls):
        for name in (f.name, *f.metadata.get("aliases", ())):
            spelling[name] = f
            spelling[name.replace("_", "-")] = f
    for option, value in ((o, v) for f in dataclasses.fields(cls) for o, v in f.metadata["consts"].items()):
        spelling.setdefault(option, None)
    values = {}
    for key, value in raw.items():
        f = spelling.get(str(key), "unknown")
        if f == "unknown":
            raise ConfigError("config", f"{path}: unknown setting {key!r}; see --help for the settings")
        if f is None:  # bf16: true and the like
            if value is True:
                values["precision"] = str(key)
            continue
        try:
            values[f.name] = convert(cls, f, value)
        except ValueError as err:
            raise ConfigError("config", f"{path}: {key}: {err}") from None
    return values


def parse_args(cls, description: str, argv: list[str] | None = None, epilog: str | None = None):
    """Flags (and --config) -> a validated config, plus the run options (--config path, --debug).
    Exits with status 2 and a one-line message, as argparse does, for any bad setting."""
    parser = build_parser(cls, description, epilog)
    namespace = vars(parser.parse_args(argv))
    config_file, debug = namespace.pop("config"), namespace.pop("debug")
    try:
        values = read_yaml(cls, config_file) if config_file else {}
        values |= namespace
        config = cls(**values)
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
        return f"{flag(err.field)} {err}" if not str(err).startswith(flag(err.field)) else str(err)
    return str(err)


def run(main, *args, debug: bool = False) -> None:
    """Call main(*args); turn the errors a user can act on into one line on stderr and an exit code.
    With debug, re-raise for the full traceback."""
    try:
        main(*args)
    except Interrupted as err:
        if debug:
            raise
        print(f"\n{err}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        if debug:
            raise
        print("\ninterrupted; nothing half-written was kept", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except GlmtuneError as err:
        if debug:
            raise
        print(f"error: {message(err)}", file=sys.stderr)
        sys.exit(EXIT_USAGE if isinstance(err, ConfigError) else EXIT_ERROR)
    except OSError as err:
        if debug:
            raise
        print(f"error: {os_error(err)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def os_error(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"{where}no space left on the device; free some space and run the same command again"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"{where}permission denied; choose a folder you can write to"
    return f"{where}{err.strerror or err}"
