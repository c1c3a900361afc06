"""Send a git bundle's pack straight to a server's receive-pack.

`git push` needs the objects in a local repository first: git index-pack
runs here (the bundle into a scratch repository), then again on the server.
A full bundle's pack is already what receive-pack takes, so for git:// and
smart HTTP(S) we speak the push protocol (v0, report-status, atomic) and let
the server index it once. Anything we do not speak (ssh, a proxy, a dumb or
authenticating-by-helper HTTP server, TLS we cannot verify) is reported as
Unsupported while nothing has changed on the server, and the caller uses git push.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from airbundle import __version__
from airbundle.adapters.registry.transport import TLSConfig
from airbundle.errors import RefUpdateError, TargetError
from airbundle.format import pktline
from airbundle.format.pktline import ZERO_OID, Advertisement, Report
from airbundle.limits import DEFAULT_LIMITS, Limits

AGENT = f"agent=airbundle/{__version__}"
# The server indexes the whole pack before it answers.
ANSWER_TIMEOUT = 3600.0
CONNECT_TIMEOUT = 30.0


class Unsupported(Exception):  # noqa: N818 (a signal to fall back, not an error)
    """Not a server we can push to ourselves; nothing was sent."""


def speaks(url: str) -> bool:
    """Whether `url` is one we try first (git://, or HTTP(S) without a proxy)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "git":
        return True
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    proxies = urllib.request.getproxies_environment()
    return parts.scheme not in proxies or bool(urllib.request.proxy_bypass(parts.hostname))


def push_pack(
    url: str,
    refs: Sequence[tuple[str, str]],
    pack: Path,
    offset: int,
    *,
    force: bool,
    what: str,
    tls: TLSConfig | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Create or move `refs` (name, oid) on the server in one atomic push,
    sending the bytes of `pack` from `offset` as the pack. HTTPS trusts and
    presents what `tls` says (--ca-file, --cert), as the registry client does.

    Raises Unsupported (nothing changed on the server), RefUpdateError if a ref is
    somewhere the caller did not expect and `force` is off, TargetError if
    the server refuses.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    # Ref advertisements and push reports are small; a server sending more is
    # not one we want to keep reading from.
    max_answer = limits.max_git_answer_bytes
    session: _Session = (
        _GitSession(url, max_answer)
        if scheme == "git"
        else _HttpSession(url, tls or TLSConfig(), max_answer)
    )
    try:
        adv = session.advertisement()
        updates = [
            (adv.refs.get(name, ZERO_OID), oid, name)
            for name, oid in refs
            if adv.refs.get(name) != oid
        ]
        moved = [name for old, _, name in updates if old != ZERO_OID]
        if moved and not force:
            raise RefUpdateError(
                f"{what}: {', '.join(moved)} exist on the server with other commits",
                hint="re-run with --force to move them anyway",
            )
        if not updates:
            session.finish()
            return
        needed = {"report-status", "ofs-delta"} | ({"atomic"} if len(updates) > 1 else set())
        if not needed <= adv.capabilities:
            raise Unsupported(f"the server lacks {', '.join(sorted(needed - adv.capabilities))}")
        caps = ["report-status", "atomic", "side-band-64k", "quiet"]
        caps = [c for c in caps if c in adv.capabilities] + [AGENT]
        size = pack.stat().st_size - offset
        chunks = _read(pack, offset, limits.io_chunk_bytes)
        answer, sideband = session.push(pktline.commands(updates, caps), chunks, size)
    finally:
        session.close()
    _check_answer(answer, sideband, [name for _, _, name in updates], what)


def check_report(report: Report, names: Sequence[str], what: str) -> None:
    """Success only if the server said so for the pack and for every ref."""
    if report.errors:
        raise TargetError(f"{what}: the server failed: {'; '.join(report.errors)}")
    if not report.complete:
        raise TargetError(f"{what}: the server's report ended early; check the refs there")
    if report.unpack != "ok":
        raise TargetError(f"{what}: the server refused the pack: {report.unpack or 'no answer'}")
    failed = {name: report.refs.get(name, "not reported") for name in names}
    failed = {name: why for name, why in failed.items() if why != "ok"}
    if failed:
        text = "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
        raise TargetError(f"{what}: the server did not update {text}")


class PendingPush:
    """A git:// push whose pack has gone to the server but for its last bytes.

    The server's index-pack has parsed the objects into its quarantine; no
    object lands and no ref moves until `finish` sends the rest, and `abort`
    (closing the connection) makes the server drop them all. The import holds
    it from staging to publishing: the refs still move last, after the images.
    """

    def __init__(
        self, session: _GitSession, tail: bytes, commands: bytes, names: list[str], what: str
    ) -> None:
        self._session = session
        self._tail = tail
        self._commands = commands
        self._names = names
        self._what = what

    def finish(self) -> None:
        """Send the pack's last bytes; success only if the server reports it.

        Unsupported if the connection is gone (a server that closed it while
        it was held, a restart): without the last bytes the server landed
        nothing, and the caller pushes again from the start."""
        try:
            answer = self._session.exchange(self._tail)
        except OSError as exc:
            raise Unsupported(f"the connection held since staging is gone: {exc}") from None
        finally:
            self._session.close()
        if not answer:
            raise Unsupported("the connection held since staging closed without an answer")
        _check_answer(answer, _uses_sideband(self._commands), self._names, self._what)

    def abort(self) -> None:
        self._session.close()


def start_push(
    url: str,
    refs: Sequence[tuple[str, str]],
    pack: Path,
    offset: int,
    *,
    check: Callable[[], None],
    what: str,
    limits: Limits = DEFAULT_LIMITS,
) -> PendingPush | None:
    """Create `refs` on a git:// server with the pack in `pack` from `offset`,
    all of it sent but its last `Limits.git_push_held_bytes` while `check`
    runs beside it (the bundle's objects checked here: both index-packs, the
    server's and ours, at once instead of one after the other). If `check`
    raises, the connection is closed before the last bytes: nothing lands.

    None when every ref is already where `refs` say (`check` still runs).
    Unsupported (nothing sent) for other servers than git://, servers that
    lack what the push needs, and refs that exist with other commits (whether
    that is a fast-forward is the caller's question).
    """
    if urllib.parse.urlsplit(url).scheme != "git":
        raise Unsupported("not git://")
    session = _GitSession(url, limits.max_git_answer_bytes)
    try:
        adv = session.advertisement()
        updates = [(ZERO_OID, oid, name) for name, oid in refs if adv.refs.get(name) != oid]
        if any(name in adv.refs for _, _, name in updates):
            raise Unsupported("refs exist on the server with other commits")
        needed = {"report-status", "ofs-delta"} | ({"atomic"} if len(updates) > 1 else set())
        if updates and not needed <= adv.capabilities:
            raise Unsupported(f"the server lacks {', '.join(sorted(needed - adv.capabilities))}")
    except BaseException:
        session.close()
        raise
    if not updates:
        session.finish()
        session.close()
        check()
        return None
    caps = ["report-status", "atomic", "side-band-64k", "quiet"]
    caps = [c for c in caps if c in adv.capabilities] + [AGENT]
    commands = pktline.commands(updates, caps)
    size = pack.stat().st_size - offset
    held = min(size, limits.git_push_held_bytes)
    with ThreadPoolExecutor(1, thread_name_prefix="airbundle-git-check") as pool:
        checking = pool.submit(check)
        try:
            session.send(commands, _read(pack, offset, limits.io_chunk_bytes, size - held))
            checking.result()
        except BaseException:
            session.close()  # before the last bytes: the server drops the pack
            raise
    with pack.open("rb") as fh:
        fh.seek(offset + size - held)
        tail = fh.read(held)
    if len(tail) != held:
        session.close()
        raise TargetError(f"{what}: {pack} changed while it was sent")
    return PendingPush(session, tail, commands, [name for _, _, name in updates], what)


def _check_answer(answer: bytes, sideband: bool, names: Sequence[str], what: str) -> None:
    try:
        report = pktline.parse_report(answer, sideband=sideband)
    except pktline.PktLineError as exc:
        raise TargetError(f"{what}: the server's answer is not a push report: {exc}") from None
    check_report(report, names, what)


def _uses_sideband(commands: bytes) -> bool:
    return b"side-band-64k" in commands.split(b"\n", 1)[0]


def _read(path: Path, offset: int, chunk_bytes: int, size: int | None = None) -> Iterator[bytes]:
    """The file's bytes from `offset`: `size` of them, or all to its end."""
    left = size
    with path.open("rb") as fh:
        fh.seek(offset)
        while left is None or left > 0:
            chunk = fh.read(chunk_bytes if left is None else min(chunk_bytes, left))
            if not chunk:
                if left:
                    raise TargetError(f"{path} ended {left} bytes early")
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


class _Session:
    def advertisement(self) -> Advertisement:
        raise NotImplementedError

    def push(self, commands: bytes, pack: Iterator[bytes], size: int) -> tuple[bytes, bool]:
        """Send commands and pack; the server's answer, and whether it is
        multiplexed (side-band-64k)."""
        raise NotImplementedError

    def finish(self) -> None:
        """End the session without pushing."""

    def close(self) -> None:
        pass


class _GitSession(_Session):
    """git:// (git daemon): one TCP connection for the whole exchange."""

    def __init__(self, url: str, max_answer: int) -> None:
        parts = urllib.parse.urlsplit(url)
        self.max_answer = max_answer
        self.host = parts.hostname or ""
        self.port = parts.port or 9418
        self.path = urllib.parse.unquote(parts.path)
        self.netloc = parts.netloc
        self.sock: socket.socket | None = None
        self.reader: socket.SocketIO | None = None

    def advertisement(self) -> Advertisement:
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
            request = f"git-receive-pack {self.path}\0host={self.netloc}\0".encode()
            self.sock.sendall(pktline.encode(request))
            data = self._until_flush()
            return pktline.parse_advertisement(data)
        except (OSError, pktline.PktLineError) as exc:
            raise Unsupported(str(exc)) from None

    def _recv_exact(self, size: int) -> bytes:
        assert self.sock is not None
        buf = bytearray()
        while len(buf) < size:
            part = self.sock.recv(size - len(buf))
            if not part:
                raise OSError("the server closed the connection")
            buf += part
        return bytes(buf)

    def _until_flush(self) -> bytes:
        out = bytearray()
        while True:
            if len(out) > self.max_answer:
                raise pktline.PktLineError(f"ref advertisement over {self.max_answer} bytes")
            head = self._recv_exact(4)
            out += head
            size = pktline.length(head)
            if size in (0, 1, 2):
                return bytes(out)
            if size < 4:
                raise pktline.PktLineError(f"bad pkt-line length {head!r}")
            out += self._recv_exact(size - 4)

    def push(self, commands: bytes, pack: Iterator[bytes], size: int) -> tuple[bytes, bool]:
        self.send(commands, pack)
        return self.answer(), _uses_sideband(commands)

    def send(self, *parts: bytes | Iterator[bytes]) -> None:
        assert self.sock is not None
        try:
            for part in parts:
                for chunk in [part] if isinstance(part, bytes) else part:
                    self.sock.sendall(chunk)
        except OSError as exc:
            raise TargetError(f"git://{self.netloc}{self.path}: push failed: {exc}") from None

    def answer(self) -> bytes:
        try:
            return self.exchange(b"")
        except OSError as exc:
            raise TargetError(f"git://{self.netloc}{self.path}: push failed: {exc}") from None

    def exchange(self, last: bytes) -> bytes:
        """Send `last`, then read the server's whole answer (OSError as it is)."""
        assert self.sock is not None
        self.sock.sendall(last)
        self.sock.settimeout(ANSWER_TIMEOUT)
        answer = bytearray()
        while part := self.sock.recv(1 << 16):
            answer += part
            if len(answer) > self.max_answer:
                raise OSError(f"the answer is over {self.max_answer} bytes")
        return bytes(answer)

    def finish(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendall(pktline.FLUSH)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class _HttpSession(_Session):
    """Smart HTTP: GET info/refs, then one POST with the commands and the pack."""

    def __init__(self, url: str, tls: TLSConfig, max_answer: int) -> None:
        parts = urllib.parse.urlsplit(url)
        self.max_answer = max_answer
        self.headers = {"User-Agent": f"git/2 airbundle/{__version__}"}
        if parts.username is not None:
            creds = f"{urllib.parse.unquote(parts.username)}:"
            creds += urllib.parse.unquote(parts.password or "")
            self.headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        self.base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.shown = self.base
        self.pool = urllib3.PoolManager(
            ssl_context=tls.ssl_context(),
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=ANSWER_TIMEOUT),
            retries=False,
        )

    def advertisement(self) -> Advertisement:
        try:
            response = self.pool.request(
                "GET",
                f"{self.base}/info/refs?service=git-receive-pack",
                headers=self.headers,
                redirect=False,
            )
        except (Urllib3Error, OSError) as exc:
            raise Unsupported(str(exc)) from None
        kind = response.headers.get("content-type", "")
        if response.status != 200 or kind != "application/x-git-receive-pack-advertisement":
            raise Unsupported(f"HTTP {response.status} {kind}")
        try:
            return pktline.parse_advertisement(response.data)
        except pktline.PktLineError as exc:
            raise Unsupported(str(exc)) from None

    def push(self, commands: bytes, pack: Iterator[bytes], size: int) -> tuple[bytes, bool]:
        headers = {
            **self.headers,
            "Content-Type": "application/x-git-receive-pack-request",
            "Accept": "application/x-git-receive-pack-result",
            "Content-Length": str(len(commands) + size),
        }

        def body() -> Iterator[bytes]:
            yield commands
            yield from pack

        response: urllib3.BaseHTTPResponse | None = None
        try:
            response = self.pool.request(
                "POST",
                f"{self.base}/git-receive-pack",
                body=body(),
                headers=headers,
                preload_content=False,
            )
            if response.status == 401:
                # Refused before it was read: nothing changed. git push may have
                # credentials (a helper) that we do not.
                raise Unsupported("HTTP 401")
            kind = response.headers.get("content-type", "")
            if response.status != 200 or kind != "application/x-git-receive-pack-result":
                raise TargetError(f"{self.shown}: push failed: HTTP {response.status} {kind}")
            answer = response.read(self.max_answer + 1)
            if len(answer) > self.max_answer:
                raise TargetError(f"{self.shown}: the push answer is over {self.max_answer} bytes")
        except (Urllib3Error, OSError) as exc:
            raise TargetError(f"{self.shown}: push failed: {exc}") from None
        finally:
            if response is not None:
                response.release_conn()
        return answer, _uses_sideband(commands)

    def close(self) -> None:
        self.pool.clear()
