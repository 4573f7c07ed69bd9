"""Command-line flags declared once, on the fields of the options dataclasses.

A field made with ``option(...)`` is also a flag: its name (``sample_files`` -> ``--sample-files``,
or ``flag=`` another), its help, and what argparse needs to read it. ``add_flags`` puts a class's
flags on a parser; the parser gives only the flags that were given (``argparse.SUPPRESS``), so the
dataclass's own defaults are the only defaults, and ``given`` hands them to the class, whose
``__post_init__`` checks them as it checks options built in code.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields
from typing import Any, Iterable

from promptscore.errors import UsageError


def option(default: Any = MISSING, *, help: str | None = None, flag: str | None = None,
           default_factory: Any = MISSING, **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line flag (``argparse_kwargs``: ``type``,
    ``metavar``, ``choices``, ``action``, ``required``)."""
    spec = {"flag": flag, "help": help, **argparse_kwargs}
    return field(default=default, default_factory=default_factory, metadata={"cli": spec})


def flag_of(cls: type, name: str) -> dict:
    """The flag spec of the field ``name`` of ``cls``."""
    return next(f.metadata["cli"] for f in fields(cls) if f.name == name)


def add_flags(parser: argparse.ArgumentParser, cls: type, names: Iterable[str] | None = None) -> None:
    """Add the flags of ``cls``'s fields (those of ``names``, in that order; default: all, in the
    order of the fields) to ``parser``."""
    specs = {f.name: f.metadata["cli"] for f in fields(cls) if "cli" in f.metadata}
    for name in (names if names is not None else specs):
        add_flag(parser, name, specs[name])


def add_flag(parser: argparse.ArgumentParser, dest: str, spec: dict) -> None:
    """Add one flag, read into ``dest``; absent from the parsed flags when not given."""
    kwargs = {k: v for k, v in spec.items() if k != "flag" and v is not None}
    kwargs.setdefault("default", argparse.SUPPRESS)
    parser.add_argument(spec.get("flag") or "--" + dest.replace("_", "-"), dest=dest, **kwargs)


def given(args: argparse.Namespace, cls: type) -> dict:
    """The parsed flags that are fields of ``cls``, by field name."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if "cli" in f.metadata and hasattr(args, f.name)}


def check_choices(obj: Any) -> None:
    """Refuse (UsageError, exit 2) a field of ``obj`` whose value is not one of its flag's choices,
    in the words argparse uses for the flag."""
    for f in fields(obj):
        spec = f.metadata.get("cli") or {}
        value = getattr(obj, f.name)
        if spec.get("choices") and value is not None and value not in spec["choices"]:
            name = spec.get("flag") or "--" + f.name.replace("_", "-")
            raise UsageError(f"argument {name}: invalid choice: {value!r} "
                             f"(choose from {', '.join(map(repr, spec['choices']))})")
