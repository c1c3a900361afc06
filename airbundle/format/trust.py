"""Which signing keys a receiving site trusts, and how many of them must sign.

Trust comes from files an operator already knows: plain ``.pub`` files and
OpenSSH ``allowed_signers`` files (``man ssh-keygen``, ALLOWED SIGNERS), so the
same file can be handed to ``ssh-keygen -Y verify``. Verifying a signature is
:mod:`airbundle.format.sshsig`'s job; this module only decides whether the
verified signers are enough.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from airbundle.errors import KeyFileError, SignatureError, UsageError
from airbundle.format.sshsig import KEY_TYPE, PublicKey

ANY_PRINCIPAL: Final = "*"

# Anything that looks like an SSH key type, so that an RSA or certificate line
# is reported as an unsupported key rather than as a bad option.
_KEY_TYPE_RE: Final = re.compile(
    r"(?:ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9-]+@openssh\.com|"
    r"rsa-sha2-[0-9]+|[a-z0-9-]+-cert-v01@openssh\.com)",
    re.ASCII,
)
_TIMESTAMP_RE: Final = re.compile(r"([0-9]{8})([0-9]{4}([0-9]{2})?)?([zZ]?)", re.ASCII)
_BLANK: Final = " \t"


def _match_pattern(name: str, pattern: str) -> bool:
    """OpenSSH pattern match: ``*`` and ``?`` wildcards, nothing else is special."""
    # Runs of * collapse so that a long pattern cannot make the regex backtrack badly.
    pattern = re.sub(r"\*+", "*", pattern)
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def _match_pattern_list(name: str, patterns: Iterable[str]) -> bool:
    """OpenSSH pattern-list semantics: any matching ``!pattern`` vetoes the name."""
    matched = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if _match_pattern(name, pattern[1:]):
                return False
        elif _match_pattern(name, pattern):
            matched = True
    return matched


def _require_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("trust checks need a timezone-aware time")


@dataclass(frozen=True)
class TrustedKey:
    """One trusted key, with the limits its trust file line put on it."""

    public_key: PublicKey
    principals: tuple[str, ...]
    namespaces: tuple[str, ...] | None
    valid_after: datetime | None
    valid_before: datetime | None
    source: str

    def refusal(self, namespace: str, at: datetime) -> str | None:
        """Why this key may not sign ``namespace`` at ``at``, or None if it may."""
        _require_aware(at)
        if self.namespaces is not None and not _match_pattern_list(namespace, self.namespaces):
            return (
                f"trusted only for namespaces {','.join(self.namespaces)} by {self.source}, "
                f"not {namespace}"
            )
        # Inclusive at both ends, as ssh-keygen compares them.
        if self.valid_after is not None and at < self.valid_after:
            return f"not valid until {self.valid_after.isoformat()} by {self.source}"
        if self.valid_before is not None and at > self.valid_before:
            return f"expired at {self.valid_before.isoformat()} by {self.source}"
        return None

    def allows(self, namespace: str, at: datetime) -> bool:
        return self.refusal(namespace, at) is None


def _token(line: str, pos: int, where: str) -> tuple[str, int]:
    """Read up to the next blank outside double quotes; ``\\"`` escapes inside quotes."""
    start = pos
    quoted = False
    while pos < len(line):
        ch = line[pos]
        if quoted and ch == "\\" and line.startswith('"', pos + 1):
            pos += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in _BLANK:
            break
        pos += 1
    if quoted:
        raise KeyFileError(f"{where}: unterminated double quote")
    return line[start:pos], pos


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in _BLANK:
        pos += 1
    return pos


def _split_outside_quotes(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted and ch == "\\" and text.startswith('"', i + 1):
            current.append('\\"')
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _dequote(name: str, value: str, where: str) -> str:
    if len(value) < 2 or not value.startswith('"') or not value.endswith('"'):
        raise KeyFileError(f'{where}: option {name} needs a double-quoted value: {name}="..."')
    inner = value[1:-1]
    if re.search(r'(?<!\\)"', inner):
        raise KeyFileError(f"{where}: option {name} has a stray double quote")
    return inner.replace('\\"', '"')


def _parse_timestamp(name: str, value: str, where: str) -> datetime:
    match = _TIMESTAMP_RE.fullmatch(value)
    if match is None:
        raise KeyFileError(
            f"{where}: {name}={value!r} is not a time in YYYYMMDD[Z] or YYYYMMDDHHMM[SS][Z] form"
        )
    digits = match.group(1) + (match.group(2) or "0000")
    digits += "" if match.group(3) else "00"
    try:
        return datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        raise KeyFileError(f"{where}: {name}={value!r} is not a valid date and time") from None


def _split_list(name: str, value: str, where: str) -> tuple[str, ...]:
    items = tuple(value.split(","))
    if any(not item for item in items):
        raise KeyFileError(f"{where}: {name} has an empty entry in {value!r}")
    return items


@dataclass
class _Options:
    namespaces: tuple[str, ...] | None = None
    valid_after: datetime | None = None
    valid_before: datetime | None = None


def _parse_options(text: str, where: str) -> _Options:
    options = _Options()
    seen: set[str] = set()
    for option in _split_outside_quotes(text):
        name, eq, value = option.partition("=")
        name = name.lower()
        if name in seen:
            raise KeyFileError(f"{where}: option {name} is given twice")
        seen.add(name)
        if name == "cert-authority":
            raise KeyFileError(
                f"{where}: cert-authority is not supported; airbundle does not accept "
                "certificates, list each signer's ssh-ed25519 key instead"
            )
        if not eq:
            raise KeyFileError(f"{where}: unknown option {option!r}")
        if name == "namespaces":
            options.namespaces = _split_list(name, _dequote(name, value, where), where)
        elif name == "valid-after":
            options.valid_after = _parse_timestamp(name, _dequote(name, value, where), where)
        elif name == "valid-before":
            options.valid_before = _parse_timestamp(name, _dequote(name, value, where), where)
        else:
            raise KeyFileError(
                f"{where}: unknown option {name!r}; supported: namespaces, valid-after, "
                "valid-before"
            )
    if (
        options.valid_after is not None
        and options.valid_before is not None
        and options.valid_before <= options.valid_after
    ):
        raise KeyFileError(f"{where}: valid-before is not later than valid-after")
    return options


def _parse_key(line: str, pos: int, where: str) -> PublicKey:
    key_type, pos = _token(line, pos, where)
    pos = _skip_blanks(line, pos)
    encoded, pos = _token(line, pos, where)
    if not encoded:
        raise KeyFileError(f"{where}: the key after {key_type} is missing")
    comment = line[_skip_blanks(line, pos) :].strip(_BLANK)
    return PublicKey.from_parts(key_type, encoded, comment, source=where)


def _parse_line(line: str, where: str) -> TrustedKey:
    first, pos = _token(line, 0, where)
    if _KEY_TYPE_RE.fullmatch(first):
        return TrustedKey(_parse_key(line, 0, where), (ANY_PRINCIPAL,), None, None, None, where)

    if first.startswith('"'):
        # ssh-keygen ends a quoted principals field at the next quote, no escapes.
        close = line.find('"', 1)
        if close < 0:
            raise KeyFileError(f"{where}: unterminated double quote in principals")
        principals_text, pos = line[1:close], close + 1
        if pos < len(line) and line[pos] not in _BLANK:
            raise KeyFileError(f"{where}: text follows the closing quote of the principals")
    else:
        principals_text = first
    principals = _split_list("principals", principals_text, where)

    pos = _skip_blanks(line, pos)
    if pos >= len(line):
        raise KeyFileError(
            f"{where}: expected 'principals [options] {KEY_TYPE} BASE64 [comment]' "
            f"or '{KEY_TYPE} BASE64 [comment]', found only {first!r}"
        )
    second, after = _token(line, pos, where)
    options = _Options()
    if not _KEY_TYPE_RE.fullmatch(second):
        options = _parse_options(second, where)
        pos = _skip_blanks(line, after)
        if pos >= len(line):
            raise KeyFileError(f"{where}: the key is missing after the options")
        third, _ = _token(line, pos, where)
        if not _KEY_TYPE_RE.fullmatch(third):
            raise KeyFileError(
                f"{where}: expected a key type such as {KEY_TYPE} after the options, "
                f"found {third!r} (options are separated by commas, not spaces)"
            )
    key = _parse_key(line, pos, where)
    return TrustedKey(
        key, principals, options.namespaces, options.valid_after, options.valid_before, where
    )


_PRIVATE_KEY_MARK = re.compile(r"^-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----", re.MULTILINE)


def parse_trust_file(text: str, *, source: str) -> list[TrustedKey]:
    """Trusted keys from a ``.pub`` file or an OpenSSH ``allowed_signers`` file.

    Each line is read on its own: a line starting with a key type is a bare
    public key, trusted for any principal, namespace and time; any other line
    is in ``allowed_signers`` form, ``principals [options] ssh-ed25519 BASE64
    [comment]``, with the options ``namespaces``, ``valid-after`` and
    ``valid-before``. ``cert-authority`` is refused because airbundle does not
    verify certificates.

    Timestamps without a trailing ``Z`` are read as UTC. ssh-keygen reads
    them in the local time zone; a trust decision that depends on the time zone
    of whichever machine runs it would differ between sites, so airbundle does
    not follow it. Write the ``Z`` to mean the same to both tools.

    Errors name ``source:line``.
    """
    if _PRIVATE_KEY_MARK.search(text):
        # The commonest mistake: `--trust keys/release` instead of its .pub.
        raise KeyFileError(
            f"{source} is a private key, not a trust file",
            hint=f"pass the public key ({source}.pub) or an allowed_signers file; "
            "keep the private key off this machine if it only verifies",
        )
    keys: list[TrustedKey] = []
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r").strip(_BLANK)
        if not line or line.startswith("#"):
            continue
        keys.append(_parse_line(line, f"{source}:{number}"))
    return keys


@dataclass(frozen=True)
class TrustPolicy:
    """The trusted keys, and how many distinct ones must have signed."""

    keys: tuple[TrustedKey, ...]
    threshold: int = 1

    def __post_init__(self) -> None:
        distinct = len({trusted.public_key for trusted in self.keys})
        if not self.keys:
            raise UsageError("the trust set is empty: give at least one trusted public key")
        if self.threshold < 1:
            raise UsageError(f"signature threshold must be at least 1, not {self.threshold}")
        if self.threshold > distinct:
            raise UsageError(
                f"signature threshold {self.threshold} can never be met: "
                f"the trust set has {distinct} distinct key(s)"
            )

    def check(
        self, signers: Iterable[tuple[str, PublicKey]], *, namespace: str, at: datetime
    ) -> list[TrustedKey]:
        """The trusted keys among ``signers`` if there are at least ``threshold`` of them.

        ``signers`` pairs the name of each signature (for messages) with the key
        that signature was verified against. Two signatures by one key count
        once, so copying a signature cannot stand in for a second signer.
        """
        _require_aware(at)
        matched: dict[PublicKey, TrustedKey] = {}
        notes: list[str] = []
        for name, key in signers:
            if key in matched:
                status = "trusted, but the same key as another signature: counted once"
            else:
                status, trusted = self._status(key, namespace, at)
                if trusted is not None:
                    matched[key] = trusted
            notes.append(f"{key.fingerprint} in {name} ({status})")
        if len(matched) >= self.threshold:
            return list(matched.values())
        raise SignatureError(
            f"bundle has {len(matched)} trusted signature(s) of {self.threshold} required; "
            f"signers: {', '.join(notes) if notes else 'none'}",
            hint="sign with a key in the trust set, or add the signer's key to the trust file",
        )

    def _status(
        self, key: PublicKey, namespace: str, at: datetime
    ) -> tuple[str, TrustedKey | None]:
        candidates = [trusted for trusted in self.keys if trusted.public_key == key]
        if not candidates:
            return "not in trust set", None
        refusals: list[str] = []
        for trusted in candidates:
            refusal = trusted.refusal(namespace, at)
            if refusal is None:
                return "trusted", trusted
            refusals.append(refusal)
        return "; ".join(refusals), None
