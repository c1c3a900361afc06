"""Semantic versions and the version constraints Helm accepts (`^1.2`, `~1.2.3`,
`>=1.0 <2.0`, `1.2.x`, `1.0 - 1.4`, `||`), for picking a chart version.

Helm reads constraints with Masterminds/semver; this follows its documented
rules where a chart spec can meet them:

- a version may start with `v` and may leave out minor and patch (`1.2` is 1.2.0);
- terms separated by spaces or commas must all hold; groups separated by `||`
  are alternatives;
- `x`, `X` and `*` stand for any number; a bare partial version is a range
  (`1.2` matches 1.2.x); `~1.2.3` is >=1.2.3 <1.3.0, `~1` is >=1 <2; `^1.2.3`
  is >=1.2.3 <2.0.0, `^0.2.3` is >=0.2.3 <0.3.0, `^0.0.3` is >=0.0.3 <0.0.4;
- a pre-release version (1.2.0-rc.1) matches only a term that names a
  pre-release itself, so ranges pick released versions.

Pure: text in, values out; errors are FormatError naming the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import total_ordering

from airbundle.errors import FormatError

_NUMBER = r"0|[1-9][0-9]*"
_IDENT = r"[0-9A-Za-z-]+"
# Lenient as Helm is: leading v, missing minor/patch (a strict one has all three).
_VERSION = re.compile(
    rf"v?(?P<major>{_NUMBER})(?:\.(?P<minor>{_NUMBER}))?(?:\.(?P<patch>{_NUMBER}))?"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?(?:\+(?P<build>{_IDENT}(?:\.{_IDENT})*))?"
)
_MAX_TEXT = 256


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""
    text: str = ""  # as written, for messages and for choosing by exact text

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.fullmatch(text) if len(text) <= _MAX_TEXT else None
        if match is None:
            raise FormatError(f"{text[:_MAX_TEXT]!r} is not a semantic version")
        pre = match.group("pre")
        return cls(
            int(match.group("major")),
            int(match.group("minor") or 0),
            int(match.group("patch") or 0),
            tuple(pre.split(".")) if pre else (),
            match.group("build") or "",
            text,
        )

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        # A release sorts after its pre-releases; numeric identifiers sort
        # numerically and before alphanumeric ones (semver.org, item 11).
        pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        out = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            out += "-" + ".".join(self.prerelease)
        if self.build:
            out += "+" + self.build
        return out


@dataclass(frozen=True)
class _Bound:
    """One comparison: `op` is one of = != > >= < <=."""

    op: str
    version: Version

    def holds(self, v: Version) -> bool:
        c = self.version
        return {
            "=": v == c,
            "!=": v != c,
            ">": v > c,
            ">=": v >= c,
            "<": v < c,
            "<=": v <= c,
        }[self.op]


@dataclass(frozen=True)
class _Term:
    """A term of a constraint: bounds that must all hold, and whether it names
    a pre-release (only then may a pre-release version match it)."""

    bounds: tuple[_Bound, ...]
    prerelease: bool


_TERM = re.compile(r"(?P<op>!=|>=|=>|<=|=<|~>|[=<>~^])?\s*(?P<v>v?[0-9xX*][0-9A-Za-z.+*-]*)")
_WILD = ("x", "X", "*")


@dataclass(frozen=True)
class Constraint:
    text: str
    groups: tuple[tuple[_Term, ...], ...]

    @classmethod
    def parse(cls, text: str) -> Constraint:
        if len(text) > _MAX_TEXT:
            raise FormatError(f"version constraint {text[:40]!r}... is too long")
        groups = []
        for group in text.split("||"):
            terms = _terms(group, text)
            if not terms:
                raise FormatError(f"version constraint {text!r} has an empty alternative")
            groups.append(tuple(terms))
        return cls(text, tuple(groups))

    def allows(self, version: Version) -> bool:
        for group in self.groups:
            # As Masterminds: a pre-release passes only terms that name one.
            if version.prerelease and not all(t.prerelease for t in group):
                continue
            if all(b.holds(version) for t in group for b in t.bounds):
                return True
        return False


def _terms(group: str, whole: str) -> list[_Term]:
    text = group.strip()
    # A hyphen range, "1.2 - 1.4": the spaces around the dash make it one.
    hyphen = re.fullmatch(r"(\S+)\s+-\s+(\S+)", text)
    if hyphen:
        low = _partial(hyphen.group(1), whole)
        high = _partial(hyphen.group(2), whole)
        bounds = (_Bound(">=", low.floor()), *_upper_inclusive(high))
        return [_Term(bounds, bool(low.pre or high.pre))]
    terms = []
    pos = 0
    text = text.replace(",", " ")
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        match = _TERM.match(text, pos)
        if match is None:
            raise FormatError(f"version constraint {whole!r}: cannot read {text[pos:][:40]!r}")
        terms.append(_term(match.group("op") or "", match.group("v"), whole))
        pos = match.end()
    return terms


@dataclass(frozen=True)
class _Partial:
    """A version as written in a constraint: some parts may be missing or wild."""

    parts: tuple[int | None, ...]  # major, minor, patch; None: missing or wild
    pre: tuple[str, ...]
    text: str

    def floor(self) -> Version:
        major, minor, patch = (p or 0 for p in self.parts)
        return Version(major, minor, patch, self.pre, "", self.text)

    @property
    def exact(self) -> bool:
        return None not in self.parts


def _partial(text: str, whole: str) -> _Partial:
    body = text[1:] if text.startswith("v") else text
    body = body.split("+", 1)[0]
    core, _, pre = body.partition("-")
    pieces = core.split(".")
    if not 1 <= len(pieces) <= 3:
        raise FormatError(f"version constraint {whole!r}: {text!r} is not a version")
    parts: list[int | None] = []
    for piece in pieces:
        if piece in _WILD:
            parts.append(None)
        elif re.fullmatch(_NUMBER, piece):
            parts.append(int(piece))
        else:
            raise FormatError(f"version constraint {whole!r}: {text!r} is not a version")
    # Nothing after a wildcard counts: 1.x.3 is 1.x.
    if None in parts:
        parts = parts[: parts.index(None)]
    parts += [None] * (3 - len(parts))
    if pre and not re.fullmatch(rf"{_IDENT}(?:\.{_IDENT})*", pre):
        raise FormatError(f"version constraint {whole!r}: {text!r} is not a version")
    return _Partial(tuple(parts), tuple(pre.split(".")) if pre else (), text)


def _next(parts: tuple[int | None, ...], level: int) -> Version:
    """The first version above everything that shares `parts` up to `level`."""
    major, minor, _patch = (p or 0 for p in parts)
    if level == 0:
        return Version(major + 1, 0, 0)
    if level == 1:
        return Version(major, minor + 1, 0)
    return Version(major, minor, (parts[2] or 0) + 1)


def _given(p: _Partial) -> int:
    """How many leading parts are numbers (0 to 3)."""
    return next((i for i, v in enumerate(p.parts) if v is None), 3)


def _upper_inclusive(p: _Partial) -> tuple[_Bound, ...]:
    given = _given(p)
    if given == 0:
        return ()
    if given == 3:
        return (_Bound("<=", p.floor()),)
    return (_Bound("<", _next(p.parts, given - 1)),)


def _term(op: str, text: str, whole: str) -> _Term:
    p = _partial(text, whole)
    given = _given(p)
    floor = p.floor()
    pre = bool(p.pre)
    op = {"=>": ">=", "=<": "<=", "~>": "~"}.get(op, op)
    if given == 0:  # *, x: any release (`>*` and `<*`: none)
        if op in (">", "<"):
            return _Term((_Bound("<", Version(0, 0, 0)),), pre)
        return _Term((), pre)
    if op in ("", "="):
        if given == 3:
            return _Term((_Bound("=", floor),), pre)
        return _Term((_Bound(">=", floor), _Bound("<", _next(p.parts, given - 1))), pre)
    if op == "!=":
        # `!=1.2` excludes 1.2.0 only (one term cannot say "below or above").
        return _Term((_Bound("!=", floor),), pre)
    if op == ">":
        return _Term((_Bound(">" if given == 3 else ">=", _bump(p, given)),), pre)
    if op == ">=":
        return _Term((_Bound(">=", floor),), pre)
    if op == "<":
        return _Term((_Bound("<", floor),), pre)
    if op == "<=":
        return _Term(_upper_inclusive(p), pre)
    if op == "~":
        level = 0 if given == 1 else 1
        return _Term((_Bound(">=", floor), _Bound("<", _next(p.parts, level))), pre)
    # ^: the leftmost non-zero part may not change.
    parts = [v or 0 for v in p.parts]
    if parts[0] > 0 or given == 1:
        level = 0
    elif parts[1] > 0 or given == 2:
        level = 1
    else:
        level = 2
    return _Term((_Bound(">=", floor), _Bound("<", _next(p.parts, level))), pre)


def _bump(p: _Partial, given: int) -> Version:
    """`>1.2` means above every 1.2.x: at least 1.3.0."""
    if given == 3:
        return p.floor()
    return _next(p.parts, given - 1)


def pick(versions: Iterable[str], wanted: str) -> str | None:
    """The version a chart spec's `version:` selects among `versions` (as
    written in a repository index): the text itself if listed (an exact
    version, even one that is not semver), else the highest one the
    constraint allows; None if none does. Texts that are not versions are
    skipped."""
    listed = list(versions)
    if wanted in listed:
        return wanted
    constraint = Constraint.parse(wanted or "*")
    best: Version | None = None
    for text in listed:
        try:
            version = Version.parse(text)
        except FormatError:
            continue
        if constraint.allows(version) and (best is None or version > best):
            best = version
    return best.text if best is not None else None


def is_exact(text: str) -> bool:
    """A full version (major.minor.patch), not a range: a lock is not needed to pin it."""
    try:
        Version.parse(text)
    except FormatError:
        return False
    return bool(re.fullmatch(r"v?\d+\.\d+\.\d+\S*", text))
