"""Untrusted text made safe to show: the one escaping rule for terminals and logs.

Strings from a bundle (signed or not), from media, from a registry or a git
server reach the operator's terminal: `inspect` output a reviewer reads before
co-signing, error messages, hints. A string must not be able to move the
cursor, clear or rewrite lines, set the window title, or reorder what follows
it. So every character that is not printable is written as an escape:

* C0 controls (ESC, CR, BEL, BS, NUL, ... and LF and TAB), DEL and the C1
  controls U+0080-U+009F (U+009B is an 8-bit CSI on some terminals);
* Unicode format characters (bidirectional overrides and isolates, zero-width
  characters, BOM), line and paragraph separators, other non-space separators,
  surrogates, private-use and unassigned code points: whatever `str.isprintable`
  rejects, except the plain space.

`escape` is for one value interpolated into a line (a source, a URL, a name):
backslashes are doubled too, so `\\x1b` on screen always means the escape was
in the data, never that the data spelled it. `escape(text, lines=True)` is for
a whole rendered message: line breaks written by airbundle itself stay, the
rest is escaped the same way (backslashes kept, as messages quote values with
repr already). The CLI passes everything it prints through the second form.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape_line(line: str, backslash: bool) -> str:
    if line.isprintable() and not (backslash and "\\" in line):
        return line  # the common case: nothing to do
    out = []
    for char in line:
        if char == "\\" and backslash:
            out.append("\\\\")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(_escape_char(char))
    return "".join(out)


def escape(text: str, *, lines: bool = False) -> str:
    """`text` with every non-printable character written as a visible escape."""
    if not lines:
        return _escape_line(text, backslash=True)
    return "\n".join(_escape_line(line, backslash=False) for line in text.split("\n"))
