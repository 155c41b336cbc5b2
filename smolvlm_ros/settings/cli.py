"""Command-line flags from the settings schema, for replay, the benchmark and the demo.

Each setting becomes ``--<name-with-dashes>`` (``max_new_tokens`` -> ``--max-new-tokens``): the
same names, types, choices, ranges and descriptions as the node's parameters, so what works in
a YAML file works on the command line. Flags left out keep the front end's base settings.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from smolvlm_ros.settings.schema import Setting, Settings, SettingsError, schema


def add_setting_flags(
    parser: argparse.ArgumentParser,
    names: Iterable[str],
    title: str = "settings (as the node's parameters)",
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add a flag per setting in ``names``; ``defaults`` overrides the help's shown defaults
    for front ends whose base differs from the node's (e.g. the demo's caption rate)."""
    group = parser.add_argument_group(title)
    table = schema()
    for name in names:
        setting = table[name]
        shown = (defaults or {}).get(name, setting.default)
        group.add_argument(
            setting.flag,
            dest=name,
            default=argparse.SUPPRESS,
            help=_help(setting, shown),
            **_kind(setting),
        )


def settings_from_flags(
    args: argparse.Namespace, names: Iterable[str], base: Settings | None = None
) -> Settings:
    """``base`` (default: the defaults) with the flags of ``names`` that were given applied,
    validated; a :class:`SettingsError` names the flag. (``names`` as given to
    :func:`add_setting_flags`: a front end may have options of its own with a setting's name.)"""
    table = schema()
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    try:
        return Settings.from_mapping(given, base)
    except SettingsError as err:
        flags = [table[name].flag for name in given if str(err).startswith(name)]
        raise SettingsError(f"{flags[0]}: {err}" if flags else str(err)) from None


def _kind(setting: Setting) -> dict[str, Any]:
    """argparse's type / nargs / action for a setting (choices are checked by the schema,
    whose message names the allowed values and which stays in one place)."""
    if setting.type is bool:
        return {"action": argparse.BooleanOptionalAction}
    if setting.type is tuple:
        return {"nargs": "*", "type": setting.spec.item or str, "metavar": setting.name.upper()}
    return {"type": setting.type, "metavar": _metavar(setting)}


def _metavar(setting: Setting) -> str:
    choices = setting.spec.allowed()
    return "{" + ",".join(choices) + "}" if choices else setting.type.__name__.upper()


def _help(setting: Setting, default: Any) -> str:
    text = setting.spec.description.replace("`", "").replace("%", "%%")
    allowed = setting.range_text()
    shown = list(default) if isinstance(default, tuple) else default
    extra = f"; {allowed}" if allowed and not setting.spec.allowed() else ""
    return f"{text}{extra} (default: {shown})"
