"""One-line messages for parse errors, in the words a user typed.

jsonargparse reports problems in its own terms: "Option 'lrr' is not accepted" (which option
of which section, from which file?), "the following arguments are required: root" (spelled how
on the command line?), "train.model" for a missing ``--method``, and multi-line union dumps.
:func:`explain` turns such a message into one line that names the option as the user writes it
(``--method.lrr``, ``--data.root``), the file and section it came from, and the closest valid
key. It only *reads* what the user gave (:class:`Sources`): parsing itself stays jsonargparse's.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Sections whose value is a class chosen by name (subclass mode), and their CLI spelling.
CLASS_SECTIONS = {"model": "--method", "data": "--data"}
#: Datasets ``mlr-bench prepare`` knows.
PREPARABLE = ("voc2007", "coco2014", "nuswide")


@dataclass
class Source:
    """A config the user gave: a file (``label`` = its path) or the user config's defaults.

    ``section`` is set for a file given as the value of one section (``--data cfg.yaml``),
    whose content is that section's value.
    """

    label: str
    data: dict[str, Any]
    section: str | None = None

    def top(self) -> dict[str, Any]:
        """The content as a top-level config."""
        return {self.section: self.data} if self.section else self.data


@dataclass
class Sources:
    """What a command was given: the user's own argv (as typed) and the config files in it."""

    argv: list[str] = field(default_factory=list)
    files: list[Source] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)

    def cli_keys(self) -> Iterator[tuple[str, str]]:
        """(dotted key in LightningCLI terms, spelling as typed) for every ``--a.b`` option."""
        for arg in self.argv:
            if not arg.startswith("--") or "." not in arg.partition("=")[0]:
                continue
            typed = arg.partition("=")[0]
            key = typed[2:]
            if key.startswith("method."):
                key = "model." + key[len("method.") :]
            yield key, typed

    def chosen(self, section: str) -> str | None:
        """The class path the command selects for ``model``/``data`` (last one wins)."""
        found: str | None = None
        for source in self.files:
            found = _class_path_of(source.top().get(section), section) or found
        args = self.rewritten or self.argv
        for i, arg in enumerate(args):
            key, eq, value = arg.partition("=")
            if key not in (f"--{section}", CLASS_SECTIONS[section]):
                continue
            if not eq and i + 1 < len(args):
                value = args[i + 1]
            found = _class_path_of(value, section) or found
        return found

    def sets(self, section: str, key: str) -> bool:
        """Whether any file or option sets ``section``'s init argument ``key``."""
        for source in self.files:
            value = source.top().get(section)
            if isinstance(value, dict):
                init = value.get("init_args")
                if key in value or (isinstance(init, dict) and key in init):
                    return True
        wanted = {f"{section}.{key}", f"{section}.init_args.{key}"}
        return any(k in wanted for k, _ in self.cli_keys())


def _class_path_of(value: Any, section: str) -> str | None:
    """The class path a section's value selects: ``{class_path: X}``, ``X`` or a short name."""
    if isinstance(value, dict):
        value = value.get("class_path")
    if not isinstance(value, str) or not value.strip() or value.endswith((".yaml", ".yml")):
        return None
    if "." in value:
        return value
    from mlr_bench.cli import _resolve_value
    from mlr_bench.errors import MLRBenchError

    try:
        return _resolve_value("method" if section == "model" else "data", value)
    except MLRBenchError:
        return None


#: The sources of the command being parsed (set by the CLI; empty when unknown).
CURRENT: ContextVar[Sources | None] = ContextVar("mlr_bench_cli_sources", default=None)


# ---- what a class accepts ---------------------------------------------------------------------
def load_class(class_path: str) -> type | None:
    """Import ``package.module.Class``; None if it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except Exception:
        return None
    return obj if inspect.isclass(obj) else None


def init_params(class_path: str | None) -> tuple[list[str], list[str]]:
    """(all, required) init arguments of a class as the CLI sees them (``class_names`` is
    linked, never typed)."""
    cls = load_class(class_path) if class_path else None
    if cls is None:
        return [], []
    try:
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False)
        actions = [a for a in parser._actions if a.dest not in ("help", "class_names")]
        names = [a.dest.split(".")[0] for a in actions]
        required = [a.dest.split(".")[0] for a in actions if getattr(a, "required", False)]
    except Exception:  # fall back to the plain signature
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        plain = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        names = [p.name for p in plain if p.name != "class_names"]
        required = [p.name for p in plain if p.default is p.empty and p.name != "class_names"]
    return list(dict.fromkeys(names)), list(dict.fromkeys(required))


def short_name(section: str, class_path: str | None) -> str:
    """``taidpt`` for TaIDPT's class path (the name to type), else the class name."""
    if not class_path:
        return "?"
    from mlr_bench import registry

    kind = "method" if section == "model" else "data"
    for name, entry in registry.entries(registry.GROUPS[kind]).items():
        if entry.class_path == class_path:
            return name
    return class_path.rsplit(".", 1)[-1]


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The most similar choice (difflib), if any is reasonably close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not found:
        lowered = {c.lower(): c for c in choices}
        found = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        found = [lowered[f] for f in found]
    return found[0] if found else None


# ---- the explanations -------------------------------------------------------------------------
def explain(message: str, parser: Any = None, sources: Sources | None = None) -> str:
    """``message`` (a jsonargparse error) as one line in the user's terms."""
    sources = sources or CURRENT.get() or Sources()
    try:
        better = _explain(message, parser, sources)
    except Exception:  # an explanation must never hide the original error
        better = None
    return better or one_line(message)


def one_line(message: str) -> str:
    """Collapse a multi-line message into one line."""
    return " ".join(message.split())


def _explain(message: str, parser: Any, sources: Sources) -> str | None:
    text = message.strip()
    if m := re.match(r"the following arguments are required: (.+)$", text, re.S):
        return missing_message([k.strip() for k in m.group(1).split(",")], sources)
    if m := re.match(r"Option '([^']+)' is not accepted(?: before subcommand (.+))?$", text):
        return unknown_key_message(m.group(1), parser, sources, before=m.group(2))
    if m := re.match(r"Subcommand '([^']+)' does not accept option '([^']+)'$", text):
        return unknown_key_message(m.group(2), _subparser(parser, m.group(1)), sources)
    if m := re.match(r"Group '([^']+)' does not accept option '([^']+)'$", text):
        return unknown_key_message(f"{m.group(1)}.{m.group(2)}", parser, sources)
    if m := re.match(r"unrecognized arguments: (.+)$", text, re.S):
        return unrecognized_message(m.group(1), parser)
    if m := re.match(r"Parser key \"([^\"]+)\":\s*(.+)$", text, re.S):
        return bad_value_message(m.group(1), m.group(2), sources)
    if m := re.match(r"Key \"([^\"]+)\":\s*(.+)$", text, re.S):
        return bad_value_message(m.group(1), m.group(2), sources)
    if m := re.match(r"--(model|data)\.help: Expected a dot import path string: (.+)$", text):
        flag = CLASS_SECTIONS[m.group(1)]
        return f"{flag}.help: unknown name '{m.group(2)}'; give a name from `mlr-bench list`"
    return None


def _subparser(parser: Any, subcommand: str) -> Any:
    action = getattr(parser, "_subcommands_action", None)
    if action is not None:
        return action._name_parser_map.get(subcommand, parser)
    return parser


def _typed(key: str) -> str:
    """A LightningCLI key spelled as on the command line (``model.lr`` -> ``--method.lr``)."""
    head, _, rest = key.partition(".")
    if head == "init_args":
        return _typed(rest)
    flag = CLASS_SECTIONS.get(head, f"--{head}")
    if rest.startswith("init_args."):
        rest = rest[len("init_args.") :]
    return f"{flag}.{rest}" if rest else flag


def missing_message(keys: list[str], sources: Sources) -> str:
    """``the following arguments are required: ...`` in CLI spelling, with how to fix it."""
    parts = []
    for key in keys:
        bare = key.split(".", 1)[1] if key.split(".", 1)[0] in _subcommand_names() else key
        if bare == "model":
            parts.append("--method NAME (a method from `mlr-bench list`, e.g. --method zeroshot)")
        elif bare == "data":
            parts.append("--data NAME (a dataset from `mlr-bench list`, e.g. --data world)")
        else:
            parts.append(_missing_init_arg(bare, sources))
    return "missing " + "; missing ".join(parts)


def _subcommand_names() -> tuple[str, ...]:
    return ("fit", "validate", "test", "predict", "train")


def _missing_init_arg(key: str, sources: Sources) -> str:
    for section in ("data", "model"):
        class_path = sources.chosen(section)
        _, required = init_params(class_path)
        if key not in required:
            continue
        name = short_name(section, class_path)
        flag = f"{CLASS_SECTIONS[section]}.{key}"
        text = f"{flag} (required by {CLASS_SECTIONS[section]} {name})"
        if section == "data" and key == "root":
            text += f": {_root_hint(name)}"
        return text
    return f"'{key}'"


def _root_hint(name: str) -> str:
    from mlr_bench.user_config import USER_CONFIG

    remember = f"or set it once in {USER_CONFIG} as 'data_roots: {{{name}: DIR}}'"
    if name in PREPARABLE:
        return (
            f"the dataset's folder; get the data with `mlr-bench prepare {name} --root DIR`, "
            f"then pass --data.root DIR ({remember})"
        )
    if name == "folder":
        return (
            "a folder with classes.txt and val.csv/test.csv (README: Datasets); pass "
            f"--data.root DIR ({remember})"
        )
    return f"pass --data.root DIR ({remember})"


def _locations(key: str, sources: Sources) -> list[tuple[str, str, str]]:
    """Where a key was given: (where, section, spelled) for the command line and each file.

    ``key`` is a bare option name (``lrr``) or a dotted path (``trainer.max_epochz``).
    """
    found: list[tuple[str, str, str]] = []
    dotted = "." in key
    for full, typed in sources.cli_keys():
        if (dotted and full == key) or (not dotted and full.rsplit(".", 1)[-1] == key):
            section = full.rsplit(".", 1)[0]
            found.append(("the command line", section, typed))
    for source in sources.files:
        for path in _paths(source.top()):
            joined = ".".join(path)
            if (dotted and joined == key) or (not dotted and path[-1] == key):
                found.append((source.label, ".".join(path[:-1]), joined))
    return found


def _paths(data: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(data, dict):
        for k, v in data.items():
            path = (*prefix, str(k))
            yield path
            if str(k) != "dict_kwargs":
                yield from _paths(v, path)


def unknown_key_message(
    key: str, parser: Any, sources: Sources, before: str | None = None
) -> str | None:
    """An unknown option, named with its file/section (or CLI spelling) and the closest key."""
    if key.rsplit(".", 1)[-1] in ("class_path", "init_args"):
        return None
    if key == "method":
        where = _locations("method", sources)
        label = where[0][0] if where else "a config file"
        return (
            f"{label}: top-level key 'method' is not accepted: write 'model:' (a method's "
            "short name, class path or {class_path: ..., init_args: ...})"
        )
    locations = _locations(key, sources)
    if not locations:
        return None
    where, section, typed = locations[0]
    head = section.split(".")[0] if section else ""
    name = key.rsplit(".", 1)[-1]
    if head in CLASS_SECTIONS:
        class_path = _class_in(where, head, sources)
        accepted, _ = init_params(class_path)
        flag = CLASS_SECTIONS[head]
        what = f"{flag} {short_name(head, class_path)}"
        guess = closest(name, accepted)
        if where == "the command line":
            hint = f"; did you mean {flag}.{guess}?" if guess else ""
            return (
                f"{_typed(typed[2:]) if typed.startswith('--') else typed}: not an option of "
                f"{what}{hint} (`mlr-bench fit {flag}.help {short_name(head, class_path)}` "
                "lists them)"
            )
        hint = f"; did you mean '{guess}'?" if guess else ""
        return (
            f"{where}: {section}: option '{name}' is not accepted by {what}{hint} "
            f"(accepted: {', '.join(accepted) or 'none'})"
        )
    keys = _parser_keys(parser)
    prefix = f"{section}." if section else ""
    candidates = [k[len(prefix) :] for k in keys if k.startswith(prefix) and k != section]
    candidates = sorted({c.split(".")[0] for c in candidates if c})
    guess = closest(name, candidates)
    if where == "the command line":
        hint = f"; did you mean --{prefix}{guess}?" if guess else ""
        return f"{typed}: unknown option{hint}"
    hint = f"; did you mean '{guess}'?" if guess else ""
    place = f"{section}: " if section else "top level: "
    tail = f" before the subcommand {before}" if before else ""
    return f"{where}: {place}option '{name}' is not accepted{tail}{hint}"


def _class_in(where: str, section: str, sources: Sources) -> str | None:
    for source in sources.files:
        if source.label == where:
            path = _class_path_of(source.top().get(section), section)
            if path:
                return path
    return sources.chosen(section)


def _parser_keys(parser: Any) -> list[str]:
    """Every option key (dest) of a parser, e.g. ``trainer.max_epochs``, ``evaluator.top_k``."""
    if parser is None:
        return []
    sub = getattr(parser, "_subcommands_action", None)
    if sub is not None and "fit" in getattr(sub, "_name_parser_map", {}):
        parser = sub._name_parser_map["fit"]
    return [a.dest for a in parser._actions if a.dest not in ("help", None)]


def unrecognized_message(rest: str, parser: Any) -> str:
    """``unrecognized arguments: --x 1`` with the closest option of the subcommand."""
    tokens = rest.split()
    flag = next((t for t in tokens if t.startswith("-")), tokens[0] if tokens else rest)
    flag = flag.partition("=")[0]
    options = [f"--{k}" for k in _parser_keys(parser) if k and k not in ("config",)]
    options += ["--method", "--data", "--logger", "--config", "--print_config"]
    guess = closest(flag, options)
    hint = f"; did you mean {_typed(guess[2:]) if guess else ''}?" if guess else ""
    more = [t for t in tokens[1:] if t.startswith("-")]
    others = f" (also unknown: {' '.join(more)})" if more else ""
    if not flag.startswith("-"):
        return f"unexpected argument '{flag}'{others}: options are written --name value"
    return f"{_typed(flag[2:])}: unknown option{hint}{others}"


_TYPE = re.compile(r"<class '([^']+)'>")


def bad_value_message(key: str, detail: str, sources: Sources) -> str:
    """``Parser key "batch_size": Expected a <class 'int'>. Got value: abc`` in CLI terms."""
    if key == "config" and (m := re.search(r"File does not exist: '?([^']+)'?", detail)):
        return f"--config: no such file: {m.group(1).strip()}"
    if key in CLASS_SECTIONS:  # the class itself: not importable or not the right kind
        chosen = sources.chosen(key)
        value = f" {chosen}" if chosen else ""
        return (
            f"{CLASS_SECTIONS[key]}{value}: not a name from `mlr-bench list`, an importable "
            "class path or an existing config file"
        )
    locations = _locations(key, sources)
    typed = locations[0][2] if locations else key
    if not typed.startswith("--"):
        if locations and locations[0][0] != "the command line":
            typed = f"{locations[0][0]}: {typed}"
        else:
            typed = f"--{key}" if "." in key or key in ("seed_everything",) else key
    else:
        typed = _typed(typed[2:])
    value = re.search(r"(?:Given value|Got value): (.*)", detail)
    got = value.group(1).strip() if value else None
    subtypes = re.search(r"Subtypes: \[(.*?)\]", detail, re.S)
    if subtypes:
        names = [_short_type(t) for t in subtypes.group(1).split(", ")]
        expected = " or ".join(names)
    else:
        first = re.search(r"Expected a (.+?)(?:\. Got value|$)", detail, re.M)
        expected = _short_type(first.group(1)) if first else None
    if expected and got is not None:
        return f"{typed}: expected {expected}, got '{got}'"
    return f"{typed}: {one_line(detail)}"


def _short_type(text: str) -> str:
    text = text.strip()
    if m := _TYPE.fullmatch(text):
        return {"NoneType": "null", "str": "a string", "int": "an integer", "bool": "true/false",
                "float": "a number"}.get(m.group(1), m.group(1))  # fmt: skip
    text = _TYPE.sub(lambda m: m.group(1), text).replace("typing.", "")
    if m := re.fullmatch(r"Literal\[(.*)\]", text):
        return f"one of {m.group(1)}"
    return text


def normalise_prog(prog: str) -> str:
    """``mlr-bench [options] fit`` -> ``mlr-bench fit`` (jsonargparse's subcommand prog)."""
    return prog.replace(" [options]", "")


def iter_config_paths(argv: Sequence[str]) -> Iterator[tuple[str | None, str]]:
    """(section or None, path) of each config file in (rewritten) argv: ``--config X`` and
    ``--model X.yaml`` / ``--data X.yaml``."""
    args = list(argv)
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if not eq and key in ("--config", "-c") and i + 1 < len(args):
            value = args[i + 1]
        elif not eq:
            continue
        if key in ("--config", "-c"):
            yield None, value
        elif key in ("--model", "--data") and value.endswith((".yaml", ".yml")):
            yield key[2:], value


def file_sources(argv: Sequence[str], translate: Any = None) -> list[Source]:
    """The config files of ``argv`` that exist and parse, in order (unreadable ones are
    reported by the parser itself)."""
    import yaml

    sources = []
    for section, value in iter_config_paths(argv):
        path = Path(value).expanduser()
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            if translate is not None and section is None:
                data = translate(data, str(path))
            sources.append(Source(str(value), data, section))
    return sources
