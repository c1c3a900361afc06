"""git's pkt-line framing and the receive-pack exchange, as bytes (no I/O).

See git's Documentation/gitprotocol-common.txt and gitprotocol-pack.txt: a
pkt-line is four hex digits giving its length (the four included), then the
payload; "0000" is a flush. A receive-pack server advertises its refs and
capabilities, the client sends "old new ref" commands and a pack, the server
answers with a report ("unpack ok", then "ok REF" or "ng REF REASON").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

FLUSH = b"0000"
MAX_PAYLOAD = 65516
ZERO_OID = "0" * 40
_HEX = frozenset(b"0123456789abcdefABCDEF")


class PktLineError(ValueError):
    pass


def encode(payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise PktLineError(f"pkt-line payload of {len(payload)} bytes is too long")
    return b"%04x" % (len(payload) + 4) + payload


def length(head: bytes, *, at: int = 0) -> int:
    """The length a pkt-line's four hex digits give."""
    if len(head) != 4 or not all(c in _HEX for c in head):
        raise PktLineError(f"bad pkt-line length {head!r} at byte {at}")
    return int(head, 16)


def decode(data: bytes) -> Iterator[bytes | None]:
    """Each payload of a buffer of pkt-lines; None for a flush (or delimiter)."""
    pos = 0
    while pos < len(data):
        head = data[pos : pos + 4]
        size = length(head, at=pos)
        if size in (0, 1, 2):
            yield None
            pos += 4
            continue
        if size < 4 or pos + size > len(data):
            raise PktLineError(f"pkt-line at byte {pos} claims {size} bytes")
        yield data[pos + 4 : pos + size]
        pos += size


@dataclass(frozen=True)
class Advertisement:
    refs: dict[str, str]
    capabilities: frozenset[str]


def parse_advertisement(data: bytes) -> Advertisement:
    """A receive-pack ref advertisement, up to its flush (smart HTTP's
    "# service=" preamble is skipped)."""
    refs: dict[str, str] = {}
    caps: frozenset[str] | None = None
    lines = decode(data)
    for payload in lines:
        if payload is None:
            if caps is None and not refs:
                continue  # the flush after smart HTTP's service line
            break
        if payload.startswith(b"# service="):
            continue
        line, nul, rest = payload.rstrip(b"\n").partition(b"\0")
        if nul and caps is None:
            caps = frozenset(rest.decode("utf-8", "replace").split())
        text = line.decode("utf-8", "replace")
        if text.startswith("shallow "):
            continue
        oid, _, name = text.partition(" ")
        if len(oid) != 40 or name == "capabilities^{}":
            continue
        refs[name] = oid
    if caps is None:
        raise PktLineError("the server sent no receive-pack capabilities")
    return Advertisement(refs, caps)


def commands(updates: Sequence[tuple[str, str, str]], capabilities: Sequence[str]) -> bytes:
    """The command list (old, new, ref), the first carrying the capabilities,
    then a flush."""
    out = []
    for i, (old, new, ref) in enumerate(updates):
        line = f"{old} {new} {ref}".encode()
        if i == 0:
            line += b"\0" + " ".join(capabilities).encode()
        out.append(encode(line + b"\n"))
    return b"".join(out) + FLUSH


@dataclass(frozen=True)
class Report:
    unpack: str  # "ok", or git's reason the pack was refused
    refs: dict[str, str]  # ref -> "ok" or the reason it was not updated
    errors: tuple[str, ...] = ()  # side-band channel 3: the server gave up
    complete: bool = True  # the report (and the side-band stream) ended with a flush


def parse_report(data: bytes, *, sideband: bool) -> Report:
    """The server's answer: report-status lines, demultiplexed from
    side-band-64k (channel 1 data, 2 progress, 3 fatal error) if it was used."""
    errors: list[str] = []
    complete = True
    if sideband:
        inner = bytearray()
        complete = False
        for payload in decode(data):
            if payload is None:
                complete = True
                break
            if not payload:
                continue
            band, body = payload[0], payload[1:]
            if band == 1:
                inner += body
            elif band == 3:
                errors.append(body.decode("utf-8", "replace").strip())
        data = bytes(inner)
    unpack = ""
    refs: dict[str, str] = {}
    flushed = False
    for payload in decode(data):
        if payload is None:
            flushed = True
            break
        text = payload.decode("utf-8", "replace").rstrip("\n")
        if text.startswith("unpack "):
            unpack = text[len("unpack ") :]
        elif text.startswith("ok "):
            refs[text[3:]] = "ok"
        elif text.startswith("ng "):
            name, _, reason = text[3:].partition(" ")
            refs[name] = reason or "refused"
    return Report(unpack, refs, tuple(errors), complete and flushed)
