"""Any field of a :class:`~nsde_ray.config.TrialConfig` from text: ``--set``, ``--config FILE`` and ``--recipe``.

An override names a field as ``section.field`` (``train.lr``, ``data.image_size``) and gives it a
value of the field's declared type. The sections are :class:`TrialConfig`'s (a command may add its
own, e.g. the sweep's ``space``); sections and fields are read from the dataclasses themselves, so a
field added to a section can be set without touching this module. Overrides come in layers, later
layers winning (:func:`merged`, :func:`build_trial`); the result is built, and so validated, like
every other config: a bad value fails with the field's :class:`~nsde_ray.config.ConfigError` text.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Iterable
from typing import Any, NamedTuple

from nsde_ray.config import ConfigError, TrialConfig

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
NONE = ("none", "null")
# Named presets, each a list of --set assignments applied over the shortcut flags.
RECIPES: dict[str, tuple[str, ...]] = {
    "paper": ("train.optimizer=adam", "train.lr=1e-4", "train.lr_schedule=plateau", "train.weight_decay=0"),
}


class OverrideError(ConfigError):
    """A ``--set``, ``--config`` or ``--recipe`` that names no field or whose value has the wrong type."""


class Override(NamedTuple):
    """One field's value: ``TrialConfig.<section>.<field> = value``, already of the field's type."""

    section: str
    field: str
    value: Any


def trial_sections() -> dict[str, type]:
    """``{section: dataclass}`` of :class:`TrialConfig` (``model``: ModelConfig, ...), in declaration order."""
    return typing.get_type_hints(TrialConfig)


def field_types(sections: dict[str, type] | None = None) -> dict[str, dict[str, Any]]:
    """``{section: {field: declared type}}`` of ``sections`` (default :func:`trial_sections`), in declaration order."""
    sections = trial_sections() if sections is None else sections
    hints = {name: typing.get_type_hints(cls) for name, cls in sections.items()}
    return {name: {f.name: hints[name][f.name] for f in dataclasses.fields(cls)} for name, cls in sections.items()}


def override(name: str, value: Any, sections: dict[str, type] | None = None) -> Override:
    """``section.field`` set to a typed ``value`` (a flag's, a file's); lists become tuples, and text is parsed
    where the field takes no text (YAML reads ``1e-4`` as text). ``sections``: as in :func:`field_types`."""
    section, field, hint = _lookup(name, field_types(sections))
    if isinstance(value, str) and str not in _options(hint):
        value = parse_value(value, hint, name)
    if isinstance(value, list) and any(typing.get_origin(option) is tuple for option in _options(hint)):
        value = tuple(value)
    if not _accepts(hint, value):
        raise OverrideError(f"{name} takes {_describe(hint)}, got {value!r}")
    return Override(section, field, value)


def parse_set(assignment: str, sections: dict[str, type] | None = None) -> Override:
    """``"section.field=VALUE"`` (one ``--set``) as an :class:`Override`, VALUE parsed as the field's type.
    ``sections``: as in :func:`field_types`."""
    name, equals, text = assignment.partition("=")
    if not equals:
        raise OverrideError(f"--set {assignment!r}: expected SECTION.FIELD=VALUE, e.g. train.lr=0.05")
    section, field, hint = _lookup(name.strip(), field_types(sections))
    return Override(section, field, parse_value(text.strip(), hint, name.strip()))


def parse_value(text: str, hint: Any, name: str) -> Any:
    """``text`` as a value of type ``hint``: numbers, true/false/1/0/yes/no, none/null, comma-separated tuples."""
    options = _options(hint)
    if type(None) in options and text.lower() in NONE:
        return None
    option = next(option for option in options if option is not type(None))
    try:
        if option is str:
            return text
        if option is bool:
            if text.lower() not in TRUE + FALSE:
                raise ValueError(text)
            return text.lower() in TRUE
        if option in (int, float):
            return option(text)
        if typing.get_origin(option) is tuple:
            parts = [part.strip() for part in text.split(",")] if text else []
            items = _items(option, len(parts))
            if items is None:
                raise ValueError(text)
            return tuple(parse_value(part, item, name) for item, part in zip(items, parts))
    except (ValueError, OverrideError) as err:
        raise OverrideError(f"{name} takes {_describe(hint)}, got {text!r}") from err
    raise OverrideError(f"{name} (of type {hint}) cannot be set from text; use --config")


def from_mapping(data: Any, source: str) -> list[Override]:
    """The overrides in ``{section: {field: value}}`` (the form of :meth:`TrialConfig.to_dict`), any part of it."""
    if not isinstance(data, dict):
        raise OverrideError(f"{source} must hold a mapping of config sections, got {type(data).__name__}")
    overrides = []
    try:
        for section, values in data.items():
            _section_fields(str(section), str(section), field_types())
            if not isinstance(values, dict):
                raise OverrideError(f"section {section!r} must be a mapping of fields, got {values!r}")
            overrides += [override(f"{section}.{field}", value) for field, value in values.items()]
    except OverrideError as err:
        raise OverrideError(f"{source}: {err}") from err
    return overrides


def load_config_file(path: str) -> list[Override]:
    """The overrides in a JSON (``.json``) or YAML (``.yaml``, ``.yml``) file; YAML needs PyYAML."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise OverrideError(f"--config {path!r}: expected a .json, .yaml or .yml file")
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as err:
        raise OverrideError(f"--config {path!r} cannot be read: {err.strerror}") from err
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise OverrideError(f"--config {path!r} is not valid JSON: {err}") from err
    else:
        try:
            import yaml
        except ImportError as err:
            raise OverrideError(
                f"--config {path!r}: reading YAML needs PyYAML (pip install pyyaml, part of the "
                "dev extra), or write the file as JSON"
            ) from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise OverrideError(f"--config {path!r} is not valid YAML: {err}") from err
    return from_mapping({} if data is None else data, f"--config {path!r}")


def recipe(name: str) -> list[Override]:
    """The overrides of a named preset in :data:`RECIPES`."""
    if name not in RECIPES:
        raise OverrideError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return [parse_set(assignment) for assignment in RECIPES[name]]


def merged(*layers: Iterable[Override]) -> dict[str, dict[str, Any]]:
    """``{section: {field: value}}`` of ``layers`` applied in order (later ones win)."""
    sections: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for item in layer:
            sections.setdefault(item.section, {})[item.field] = item.value
    return sections


def build_trial(*layers: Iterable[Override]) -> TrialConfig:
    """The validated :class:`TrialConfig` of the defaults with ``layers`` applied in order (later ones win)."""
    return TrialConfig.from_dict(merged(*layers))


def _lookup(name: str, known: dict[str, dict[str, Any]]) -> tuple[str, str, Any]:
    """(section, field, type) of ``section.field``; an unknown name fails with the valid ones and a fix-it."""
    section, dot, field = name.partition(".")
    if not dot:
        matches = [f"{s}.{f}" for s, fields in known.items() for f in difflib.get_close_matches(name, fields)]
        raise OverrideError(
            f"{name!r} names no config field{_did_you_mean(matches)}: write SECTION.FIELD, sections: {', '.join(known)}"
        )
    fields = _section_fields(section, name, known)
    if field not in fields:
        raise OverrideError(
            f"unknown field {field!r} of config section {section!r}"
            + _did_you_mean([f"{section}.{f}" for f in difflib.get_close_matches(field, fields)])
            + f"; valid {section} fields: {', '.join(fields)}"
        )
    return section, field, fields[field]


def _section_fields(section: str, name: str, sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{field: type}`` of a section; an unknown section fails with the valid ones and a fix-it."""
    if section not in sections:
        field = name.partition(".")[2]
        matches = difflib.get_close_matches(section, sections)
        raise OverrideError(
            f"unknown config section {section!r}"
            + (f" in {name!r}" if field else "")
            + _did_you_mean([f"{s}.{field}" if field else s for s in matches])
            + f"; valid sections: {', '.join(sections)}"
        )
    return sections[section]


def _did_you_mean(candidates: list[str]) -> str:
    return f" (did you mean {' or '.join(candidates)}?)" if candidates else ""


def _options(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (``X | None``), or the type itself."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _items(option: Any, length: int) -> tuple[Any, ...] | None:
    """The item types of a tuple type for a tuple of ``length`` items; ``None`` if it has another length."""
    items = typing.get_args(option)
    if len(items) == 2 and items[1] is Ellipsis:
        return (items[0],) * length
    return items if len(items) == length else None


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (an int counts as a float; a bool as neither)."""
    return any(_is(option, value) for option in _options(hint))


def _is(option: Any, value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    checks = {
        type(None): value is None,
        bool: isinstance(value, bool),
        str: isinstance(value, str),
        int: number and isinstance(value, int),
        float: number,
    }
    if option in checks:
        return checks[option]
    if typing.get_origin(option) is tuple:
        items = _items(option, len(value)) if isinstance(value, tuple) else None
        return items is not None and all(_is(item, v) for item, v in zip(items, value))
    return True  # a type this module does not know: the section's own validation decides


def _describe(hint: Any) -> str:
    """A type in words, for error messages."""
    words = []
    for option in _options(hint):
        items = typing.get_args(option)
        if typing.get_origin(option) is tuple and len(items) == 2 and items[1] is Ellipsis:
            words.append(f"a comma-separated list of {_describe(items[0])}")
        elif typing.get_origin(option) is tuple:
            words.append(f"{len(items)} comma-separated values ({', '.join(_describe(item) for item in items)})")
        else:
            words.append(
                {type(None): "none", bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(
                    option, str(option)
                )
            )
    return " or ".join(words)
