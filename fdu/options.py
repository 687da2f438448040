"""One definition per option: a dataclass field carries its default, its ``--help`` text and its
command-line flag, and the parser of ``python -m fdu unlearn`` is built from the fields.

    steps: int = option(200, "optimiser steps", group="training")

:func:`add_arguments` adds every field whose metadata does not say ``cli=False`` to a parser, in
its group; :func:`from_args` builds the dataclass back from the parsed arguments. A subclass that
only changes a default uses :func:`override`, which keeps the help text of the parent's field.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import MISSING, field, fields


def option(default=MISSING, help: str = "", *, group: str = "options", flag: str | None = None,
           choices=None, cli: bool = True, type=None, nargs=None, metavar=None):
    """A dataclass field with its command-line description. ``cli=False``: set from Python only
    (``help`` then says why). A bool defaulting to True becomes ``--no-<name>`` unless ``flag``
    names it. ``type``: the argument's type when the default (None) does not tell it."""
    meta = {"help": help, "group": group, "flag": flag, "choices": choices, "cli": cli,
            "type": type, "nargs": nargs, "metavar": metavar}
    return field(default=default, metadata=meta)


def override(cls, name: str, default):
    """The field ``name`` of ``cls`` with another default, same help and flag."""
    parent = {f.name: f for f in fields(cls)}[name]
    return field(default=default, metadata=parent.metadata)


def cli_fields(cls) -> list:
    return [f for f in fields(cls) if f.metadata.get("cli", False)]


def flag_of(f: dataclasses.Field) -> str:
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


def add_arguments(parser: argparse.ArgumentParser, cls, group_order=()) -> dict:
    """Add ``cls``'s command-line fields to ``parser`` (``dest`` = the field's name); returns the
    argument groups by name."""
    groups: dict = {}
    for name in group_order:
        groups[name] = parser.add_argument_group(name)
    for f in cli_fields(cls):
        m = f.metadata
        group = groups.setdefault(m["group"], parser.add_argument_group(m["group"]))
        kwargs = {"dest": f.name, "help": m["help"]}
        required = f.default is MISSING and f.default_factory is MISSING
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if isinstance(f.default, bool):
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            scalar = f.default not in (None, MISSING) and not isinstance(f.default, (tuple, list))
            kind = m["type"] or (type(f.default) if scalar else str)
            kwargs.update(type=kind)
            for key in ("choices", "nargs", "metavar"):
                if m[key] is not None:
                    kwargs[key] = m[key]
        group.add_argument(flag_of(f), **kwargs)
    return groups


def from_args(cls, args: argparse.Namespace, **extra):
    """``cls`` built from the parsed arguments of its command-line fields, plus ``extra``."""
    values = {f.name: getattr(args, f.name) for f in cli_fields(cls)}
    for f in cli_fields(cls):
        if f.metadata["nargs"] is not None and values[f.name] is not None:
            values[f.name] = tuple(values[f.name])
    return cls(**values, **extra)
