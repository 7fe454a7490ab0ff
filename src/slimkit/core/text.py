"""Strings from files, made safe for a terminal.

Any text that came from a file (a manifest's module names, a recipe's values, a path, a Hugging
Face config string) may hold ANSI escape sequences or other control characters that would recolour,
move the cursor or rewrite what the user sees. `clean` makes them visible instead:

>>> clean("fc1\\x1b[31m red")
'fc1\\\\x1b[31m red'
>>> clean("two\\nlines")
'two\\\\nlines'

It escapes C0 and C1 control characters (newline and tab included: a message stays one line),
DEL, and the Unicode bidirectional and invisible formatting characters that can reorder or hide
text. `escape_markup` (in the CLI) additionally makes `[...]` inert for rich.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls; bidi embeddings/overrides/isolates, zero-width and BOM characters
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
MAX_CHARS = 2000  # one message line; longer text from a file is cut with an ellipsis


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: object, limit: int | None = MAX_CHARS) -> str:
    """`str(value)` with control and invisible formatting characters escaped (`\\x1b`, `\\u202e`),
    cut to `limit` characters (None: no limit)."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return _UNSAFE.sub(_escape, text)
