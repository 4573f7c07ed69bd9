"""Spark profiles (properties files in ``conf/``), read as Spark reads them, and the one check that
no credential rides along in a profile, a ``--conf`` pair or a URI."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Sequence

from udfs.uris import has_userinfo

ROOT = Path(__file__).resolve().parents[2]
# Keys whose values are credentials: Spark's spark.redaction.regex default, "(?i)secret|password|
# token|access[.]?key", also matching access_key and access-key (environment variable names).
SECRET_KEY = re.compile(r"(?i)secret|password|token|access[._-]?key")
SECRET_HELP = ("credentials are not taken on the command line or in profiles (they would be printed and kept "
               "in shell histories and node code): nodes reach OSS with their ECS RAM role, see docs/emr.md#oss-access")


def find_file(path: str | Path) -> Path:
    """A file of this project: as given (relative to the current directory), else in this checkout,
    else where the wheel installed jobs/ and conf/ (<prefix>/share/promptscore)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    for base in (ROOT, Path(sys.prefix) / "share" / "promptscore"):
        if (base / path).exists():
            return base / path
    return path


class SubmitError(Exception):
    """The call or a profile is wrong: one line on stderr, exit code 2."""


def check_property(key: str, value: str, where: str) -> None:
    """Refuse a Spark property that carries a credential: a secret-looking key (unless its value is a
    boolean switch, such as ``spark.security.credentials.hive.enabled``), or a URI with keys. The
    message names the key, never the value."""
    if SECRET_KEY.search(key) and value.strip().lower() not in ("", "true", "false"):
        raise SubmitError(f"{where} {key}: {SECRET_HELP}")
    if has_userinfo(value.strip()):
        raise SubmitError(f"{where} {key}: the value is a URI with keys in it; {SECRET_HELP}")


def check_uri(value: str | None, where: str) -> None:
    """Refuse a URI with a ``user:secret@`` part (``oss://ID:KEY@bucket/x``), naming only where it was."""
    if value and has_userinfo(value):
        raise SubmitError(f"{where} is a URI with keys in it; {SECRET_HELP}")


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            n = text[i + 1]
            if n == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _logical_lines(text: str):
    """java.util.Properties' logical lines: comments dropped, backslash continuations joined."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        line = lines[i].lstrip(" \t\f")
        i += 1
        if not line or line[0] in "#!":
            continue
        # An odd number of trailing backslashes continues the line.
        while (len(line) - len(line.rstrip("\\"))) % 2 == 1 and i < len(lines):
            line = line[:-1] + lines[i].lstrip(" \t\f")
            i += 1
        if (len(line) - len(line.rstrip("\\"))) % 2 == 1:
            line = line[:-1]
        yield start + 1, line


def read_profile(path: str | Path) -> dict[str, str]:
    """A Spark properties file as Spark reads it (java.util.Properties, values trimmed).

    Only ``spark.*`` keys are allowed: Spark ignores the others, which hides typos.
    """
    path = find_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SubmitError(f"cannot read profile {path}: {e.strerror or e}") from None
    props: dict[str, str] = {}
    for lineno, line in _logical_lines(text):
        m = re.match(r"((?:\\.|[^\s=:\\])*)\s*[=:]?\s*(.*)", line, re.S)
        key, value = _unescape(m.group(1)), _unescape(m.group(2)).strip()
        if not key.startswith("spark."):
            raise SubmitError(f"{path}:{lineno}: {key!r} is not a Spark property (keys start with spark.)")
        check_property(key, value, f"{path}:{lineno}:")
        props[key] = value
    if not props:
        raise SubmitError(f"profile {path} sets no Spark property")
    return props


def parse_conf(pairs: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings (as ``--conf`` takes them) as a dict."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("spark."):
            check_property(key, value, "--conf")
            raise SubmitError(f"--conf {key!r}: expected spark.KEY=VALUE (the value is not shown)")
        check_property(key, value, "--conf")
        out[key] = value
    return out


def conf_args(profile: str | Path | dict[str, str], overrides: dict[str, str] | None = None) -> list[str]:
    """A profile (and overrides, which win) as ``["--conf", "key=value", ...]`` for spark-submit."""
    props = dict(read_profile(profile) if not isinstance(profile, dict) else profile)
    props.update(overrides or {})
    return [arg for key, value in props.items() for arg in ("--conf", f"{key}={value}")]
