"""URIs as both sides of the jobs see them: which strings are URIs, and how to show one safely.

Shared by the driver (``promptscore``) and the executors (``udfs``), so it imports neither.
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_WINDOWS_DRIVE = re.compile(r"^[a-zA-Z]:[\\/]")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@?#]*)@")


def has_scheme(uri: str) -> bool:
    """True for ``oss://b/p``, ``hdfs://nn/p``, ``file:/x``; false for ``/x``, ``rel/x`` and ``C:\\x``."""
    return _SCHEME.match(uri) is not None and _WINDOWS_DRIVE.match(uri) is None


def has_userinfo(uri: str) -> bool:
    """True when the authority carries a ``user[:secret]@`` part (``oss://ID:KEY@bucket/x``)."""
    return _USERINFO.match(uri) is not None


def redact(uri: str) -> str:
    """``uri`` with any ``user:secret@`` part shown as ``***@``; other strings unchanged."""
    return _USERINFO.sub(r"\1***@", uri)


def redact_text(text: str) -> str:
    """``text`` with the user-info part of every URI in it hidden."""
    return re.sub(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]*", lambda m: redact(m.group(0)), text)
