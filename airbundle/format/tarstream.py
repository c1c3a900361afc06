"""A strict, streaming tar codec for bundle members.

The writer emits POSIX ustar headers that GNU tar, bsdtar and Python's
tarfile read; sizes that do not fit the 11 octal digits use the base-256
encoding GNU tar introduced (and every current reader accepts), so no PAX
headers are ever needed.

The reader accepts only what the writer produces: ustar regular files and
directories with safe, UTF-8, relative names. Anything else (links,
devices, FIFOs, PAX or GNU extension headers, unknown types, bad checksums)
is rejected, never "sanitized": a bundle that needs cleaning is not a
bundle we made.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from airbundle.errors import ArchiveError, TruncatedError
from airbundle.format.paths import check_member_path

BLOCK = 512
_MAX_OCTAL_SIZE = 0o77777777777
_END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
# After the two zero blocks a writer may pad to a record boundary with
# zeros; allow a generous amount of that, refuse anything else.
MAX_TRAILING_ZEROS = 1 << 20

REGULAR = "file"
DIRECTORY = "dir"


@dataclass(frozen=True)
class TarMember:
    path: str
    size: int
    kind: str  # REGULAR or DIRECTORY
    offset: int  # offset of the header in the uncompressed tar stream


def padding(size: int) -> int:
    """Bytes of zero padding after `size` bytes of member data."""
    return -size % BLOCK


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode("ascii") + b"\0"


def _size_field(size: int) -> bytes:
    if size < 0:
        raise ValueError(f"negative member size {size}")
    if size <= _MAX_OCTAL_SIZE:
        return _octal(size, 12)
    # Base-256: high bit of the first byte set, big-endian binary after it.
    return bytes([0x80]) + size.to_bytes(11, "big")


def _split_name(path: str) -> tuple[bytes, bytes]:
    raw = path.encode("utf-8")
    if len(raw) <= 100:
        return raw, b""
    # ustar keeps long names as prefix "/" name, split at a slash.
    for i in range(len(raw) - 1, -1, -1):
        if raw[i : i + 1] == b"/" and i <= 155 and len(raw) - i - 1 <= 100:
            return raw[i + 1 :], raw[:i]
    raise ValueError(f"member path too long for ustar: {path!r}")


def ustar_fits(path: str) -> bool:
    """Whether a plain ustar header can hold `path` (no PAX headers are written)."""
    try:
        _split_name(path)
    except ValueError:
        return False
    return True


def encode_header(path: str, size: int, *, kind: str = REGULAR, mtime: int = 0) -> bytes:
    """One 512-byte ustar header, deterministic for the same arguments."""
    name, prefix = _split_name(path if kind == REGULAR else path.rstrip("/") + "/")
    header = bytearray(BLOCK)
    header[0 : len(name)] = name
    header[100:108] = _octal(0o644 if kind == REGULAR else 0o755, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _size_field(size if kind == REGULAR else 0)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = b"0" if kind == REGULAR else b"5"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[345 : 345 + len(prefix)] = prefix
    checksum = sum(header)
    header[148:156] = f"{checksum:06o}".encode("ascii") + b"\0 "
    return bytes(header)


def _parse_number(field: bytes, what: str, where: str) -> int:
    if field[:1] and field[0] & 0x80:
        if field[0] != 0x80:
            raise ArchiveError(f"{where}: negative or malformed base-256 {what}")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not all(0x30 <= c <= 0x37 for c in text):
        raise ArchiveError(f"{where}: {what} field is not octal: {field!r}")
    return int(text, 8)


def _describe_name(raw: bytes) -> str:
    """A printable rendering of a raw name for error messages."""
    return repr(raw.decode("utf-8", "backslashreplace"))


def decode_header(block: bytes, offset: int, *, max_path_length: int) -> TarMember:
    """Parse and validate one header block; raise ArchiveError naming the member."""
    name = block[0:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0]
    raw_path = prefix + b"/" + name if prefix else name
    where = f"tar member {_describe_name(raw_path)} at offset {offset}"
    stored = _parse_number(block[148:156], "checksum", where)
    computed = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored != computed:
        raise ArchiveError(f"{where}: header checksum mismatch (corrupt archive)")
    if block[257:263] != b"ustar\0" or block[263:265] != b"00":
        raise ArchiveError(f"{where}: not a POSIX ustar header (magic {block[257:265]!r})")
    typeflag = block[156:157]
    if typeflag in (b"0", b"\0"):
        kind = REGULAR
    elif typeflag == b"5":
        kind = DIRECTORY
    else:
        kinds = {
            b"1": "a hard link",
            b"2": "a symbolic link",
            b"3": "a character device",
            b"4": "a block device",
            b"6": "a FIFO",
            b"x": "a PAX extended header",
            b"g": "a PAX global header",
            b"L": "a GNU long name header",
            b"K": "a GNU long link header",
        }
        what = kinds.get(typeflag, f"an unknown member type {typeflag!r}")
        raise ArchiveError(f"{where} is {what}; bundles hold only regular files and folders")
    try:
        path = raw_path.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveError(f"{where}: name is not valid UTF-8") from None
    if kind == DIRECTORY:
        if not path.endswith("/"):
            raise ArchiveError(f"{where}: folder name must end with '/'")
        path = path[:-1]
    check_member_path(path, max_length=max_path_length, error=ArchiveError)
    size = _parse_number(block[124:136], "size", where)
    if kind == DIRECTORY and size != 0:
        raise ArchiveError(f"{where}: folder with non-zero size {size}")
    return TarMember(path=path, size=size, kind=kind, offset=offset)


class TarReader:
    """Reads members one after another from an uncompressed tar stream.

    The caller must read or skip each member's data before asking for the
    next header; `read_data` never returns more than the header declared.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        max_path_length: int = 1024,
        source: str = "tar stream",
        stop_at_eof: bool = False,
    ) -> None:
        self._stream = stream
        self._source = source
        # For reading a region that holds whole members but no end marker.
        self._stop_at_eof = stop_at_eof
        self._offset = 0
        self._remaining = 0  # data bytes left in the current member
        self._pad = 0
        self._current: TarMember | None = None
        self._ended = False
        self._max_path_length = max_path_length
        self.end_offset: int | None = None  # where the end-of-archive marker starts

    @property
    def offset(self) -> int:
        """Bytes of the uncompressed tar stream consumed so far."""
        return self._offset

    def _read_exact(self, n: int, what: str) -> bytes:
        chunks: list[bytes] = []
        got = 0
        while got < n:
            chunk = self._stream.read(n - got)
            if not chunk:
                raise TruncatedError(
                    f"{self._source}: the bundle ends early: {what} stops after {got} of {n} bytes "
                    f"(uncompressed offset {self._offset + got})"
                )
            chunks.append(chunk)
            got += len(chunk)
        self._offset += n
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def next(self) -> TarMember | None:
        """The next member's header, or None at a valid end of archive."""
        if self._ended:
            return None
        if self._remaining or self._pad:
            self.skip_data()
        start = self._offset
        if self._stop_at_eof:
            first = self._stream.read(BLOCK)
            if not first:
                self._ended = True
                self.end_offset = start
                return None
            self._offset += len(first)
            block = first + (
                self._read_exact(BLOCK - len(first), "a tar header") if len(first) < BLOCK else b""
            )
        else:
            block = self._read_exact(BLOCK, "a tar header")
        if block == b"\0" * BLOCK:
            second = self._read_exact(BLOCK, "the tar end-of-archive marker")
            if second != b"\0" * BLOCK:
                raise ArchiveError(
                    f"{self._source}: malformed end-of-archive marker at offset {start}"
                )
            self._check_trailer()
            self.end_offset = start
            self._ended = True
            self._current = None
            return None
        try:
            member = decode_header(block, start, max_path_length=self._max_path_length)
        except ArchiveError as exc:
            raise ArchiveError(f"{self._source}: {exc.message}") from None
        self._current = member
        self._remaining = member.size
        self._pad = padding(member.size)
        return member

    def _check_trailer(self) -> None:
        seen = 0
        while True:
            chunk = self._stream.read(1 << 16)
            if not chunk:
                return
            if chunk.count(0) != len(chunk):
                raise ArchiveError(
                    f"{self._source}: unexpected data after the tar end-of-archive marker "
                    f"(uncompressed offset {self._offset + seen})"
                )
            seen += len(chunk)
            if seen > MAX_TRAILING_ZEROS:
                raise ArchiveError(
                    f"{self._source}: more than 1 MiB of padding after the end of the archive"
                )

    def read_data(self, n: int) -> bytes:
        """Up to `n` bytes of the current member's data; b'' at its end."""
        if self._remaining == 0:
            self._finish_member()
            return b""
        n = min(n, self._remaining)
        try:
            chunk = self._stream.read(n)
        except ArchiveError as exc:
            # Name the member whose bytes were damaged, not just the offset.
            where = self._current.path if self._current else "?"
            raise ArchiveError(f"{exc.message} (inside member {where!r})") from exc
        if not chunk:
            where = self._current.path if self._current else "?"
            raise TruncatedError(
                f"{self._source}: the bundle ends early inside member {where!r} "
                f"({self._remaining} bytes missing, uncompressed offset {self._offset})"
            )
        self._offset += len(chunk)
        self._remaining -= len(chunk)
        if self._remaining == 0:
            self._finish_member()
        return chunk

    def _finish_member(self) -> None:
        if self._pad:
            where = self._current.path if self._current else "?"
            pad = self._read_exact(self._pad, f"the padding of member {where!r}")
            self._pad = 0
            if pad.count(0) != len(pad):
                raise ArchiveError(
                    f"{self._source}: member {where!r}: non-zero padding after its data"
                )

    def iter_data(self, chunk_size: int) -> Iterator[bytes]:
        while True:
            chunk = self.read_data(chunk_size)
            if not chunk:
                return
            yield chunk

    def skip_data(self) -> None:
        for _ in self.iter_data(1 << 20):
            pass
        self._finish_member()
