"""serve: the disconnected side's own registry and git server, read-only.

Serves what `import` wrote (an OCI layout, a folder of bare repositories), or
a bundle in place (ops/serve_bundle.py), over the OCI distribution API (pull
side), git smart HTTP and a page at `/`. It keeps no state of its own: every
answer comes from the folders, re-read when an import changes them, or from
the bundle, so several instances over the same folders or media answer the
same and an import becomes visible without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airbundle.adapters.fsutil import read_optional, read_regular
from airbundle.adapters.targets import layout_path
from airbundle.errors import TargetError, UsageError
from airbundle.format import schemas
from airbundle.format.distribution import parse_htpasswd
from airbundle.format.jsonutil import loads_strict
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.state import StateStore, default_state_dir

if TYPE_CHECKING:  # aiohttp and the stores load when serve runs
    from airbundle.adapters.content import ContentStore
    from airbundle.format.trust import TrustPolicy

log = logging.getLogger("airbundle.serve")
DEFAULT_LISTEN = "127.0.0.1:5000"
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ServeOptions:
    registry: str | None = None  # oci:DIR
    git: Path | None = None
    listen: str = DEFAULT_LISTEN
    tls_cert: Path | None = None
    tls_key: Path | None = None
    htpasswd: Path | None = None
    keep_source_host: bool = False
    limits: Limits = DEFAULT_LIMITS
    # --bundle: a bundle file, volume set or its folder, served in place.
    bundle: Path | None = None
    policy: TrustPolicy | None = field(default=None, compare=False)
    cache_dir: Path | None = None
    allow_expired: bool = False
    # What import --charts and --files wrote, served at /charts/ and /files/.
    charts: Path | None = None
    files: Path | None = None


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(text: str) -> Listen:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (all interfaces)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT (e.g. {DEFAULT_LISTEN})")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"  # noqa: S104 - asked for
    return Listen(host, int(port))


def layout_dir(options: ServeOptions) -> Path | None:
    if options.registry is None:
        return None
    layout = layout_path(options.registry)
    if layout is None:
        raise UsageError(
            f"--registry {options.registry!r}: serve reads what import wrote into an OCI "
            "layout: --registry oci:DIR",
            hint="a registry server already serves its own content; serve is for oci: targets",
        )
    return layout


def check_options(options: ServeOptions) -> list[str]:
    """Refuse what cannot work before binding a port; return warnings."""
    warnings = []
    layout = layout_dir(options)
    if options.bundle is not None:
        check_bundle_options(options)
    elif (
        layout is None and options.git is None and options.charts is None and options.files is None
    ):
        raise UsageError(
            "nothing to serve: give --registry oci:DIR, --git DIR, --charts DIR and/or "
            "--files DIR, or --bundle BUNDLE"
        )
    if (options.tls_cert is None) != (options.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if layout is not None:
        if layout.exists() and not (layout / "oci-layout").is_file() and any(layout.iterdir()):
            raise UsageError(f"{layout} is not an OCI image layout (no oci-layout file)")
        if not layout.exists():
            warnings.append(
                f"{layout} does not exist yet: its images appear once an import writes it"
            )
    if options.git is not None and not options.git.is_dir():
        warnings.append(
            f"{options.git} does not exist yet: its repos appear once an import writes them"
        )
    for what, folder in (("charts", options.charts), ("files", options.files)):
        if folder is not None and not folder.is_dir():
            warnings.append(
                f"{folder} does not exist yet: its {what} appear once an import writes them"
            )
    listen = parse_listen(options.listen)
    if not listen.loopback and options.tls_cert is None:
        warnings.append(exposure_warning(listen))
    return warnings


def check_bundle_options(options: ServeOptions) -> None:
    if options.charts is not None or options.files is not None:
        raise UsageError(
            "--bundle serves a bundle's images and repos, not --charts or --files folders",
            hint="serve the folders import wrote with another serve, on its own --listen port",
        )
    if options.registry is not None or options.git is not None:
        raise UsageError(
            "--bundle serves one bundle on its own, not with --registry or --git",
            hint="run one serve per source, each on its own --listen port (a client takes one "
            "mirror per name: serving a bundle and a layout under one name would need rules "
            "for which tag wins)",
        )
    if options.policy is None:
        raise UsageError("--bundle needs the keys to trust: --trust PUBKEY (repeatable)")


def exposure_warning(listen: Listen) -> str:
    where = f"{listen.host}:{listen.port}"
    return (
        f"listening on {where}, beyond loopback, without TLS: content and passwords travel "
        "in clear, and every client must be told this registry speaks plain HTTP: "
        f'podman/skopeo/CRI-O `[[registry]] location = "HOST:{listen.port}"` with '
        '`insecure = true` in registries.conf, containerd a `[host."http://HOST:'
        f'{listen.port}/v2"]` entry in certs.d/*/hosts.toml (`mirror-config --insecure` writes '
        "both), Docker `insecure-registries` in daemon.json, git an http:// URL; serve with "
        "--tls-cert/--tls-key to avoid this"
    )


def load_users(path: Path, limits: Limits) -> dict[str, bytes]:
    data = read_regular(
        path, limit=limits.max_htpasswd_bytes, what="--htpasswd file", error=UsageError
    )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--htpasswd {path}: not UTF-8 text") from None
    return parse_htpasswd(text, where=str(path))


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--tls-cert {cert} / --tls-key {key}: cannot load them: {exc}") from None
    return context


def open_store(options: ServeOptions, progress: Progress | None = None) -> ContentStore:
    """The store to serve from: a bundle opened in place (its signatures checked,
    an old one indexed), or the folders import writes."""
    if options.bundle is not None:
        from airbundle.ops.serve_bundle import open_bundle_store

        assert options.policy is not None
        return open_bundle_store(
            options.bundle,
            options.policy,
            cache_dir=options.cache_dir,
            keep_source_host=options.keep_source_host,
            allow_expired=options.allow_expired,
            progress=progress,
            limits=options.limits,
        )
    from airbundle.adapters.layout_store import LayoutStore

    return LayoutStore(
        layout_dir(options),
        options.git,
        keep_source_host=options.keep_source_host,
        limits=options.limits,
    )


# --- the page at / -----------------------------------------------------------------------


def read_history(options: ServeOptions) -> tuple[list[dict[str, Any]], list[str]]:
    """The import history kept by ops/state.py for the served folders (read only,
    without its lock: the file is replaced atomically)."""
    layout = layout_dir(options)
    targets = []
    if layout is not None:
        targets.append(f"images=oci:{layout}")
    if options.git is not None:
        targets.append(f"git={options.git.resolve()}")
    for kind, folder in (("charts", options.charts), ("files", options.files)):
        if folder is not None:
            targets.append(f"{kind}={folder.resolve()}")
    folders = [layout / ".airbundle"] if layout is not None else []
    folders.append(default_state_dir())
    history: list[dict[str, Any]] = []
    warnings: list[str] = []
    for target in targets:
        for folder in folders:
            path = StateStore(folder, target).path
            try:
                data = read_optional(
                    path,
                    limit=options.limits.max_state_bytes,
                    what="import state",
                    error=TargetError,
                )
            except TargetError as exc:
                warnings.append(exc.message)
                continue
            if data is None:
                continue
            try:
                doc = loads_strict(
                    data,
                    what=str(path),
                    max_bytes=options.limits.max_manifest_bytes,
                    max_depth=options.limits.max_json_depth,
                    error=TargetError,
                )
                schemas.check(schemas.IMPORT_STATE, doc, what=f"{path}", error=TargetError)
            except TargetError as exc:
                warnings.append(f"import state {path}: {exc.message}")
                continue
            entries = doc.get("history") if isinstance(doc, dict) else None
            if not isinstance(entries, list) or doc.get("target") != target:
                warnings.append(f"import state {path} is not a state file for {target}")
                continue
            history += [{**e, "target": target} for e in entries if isinstance(e, dict)]
            break
    history.sort(key=lambda e: str(e.get("time", "")), reverse=True)
    return history, warnings


def page_data(
    store: ContentStore, options: ServeOptions, address: str, scheme: str
) -> dict[str, Any]:
    images = [
        {
            "repository": i.repository,
            "tag": i.tag,
            "pull": f"{address}/{i.repository}" + (f":{i.tag}" if i.tag else f"@{i.digest}"),
            "source": i.source,
            "digest": str(i.digest),
            "mediaType": i.media_type,
            "platforms": [str(p) for p in i.platforms],
            "size": i.size,
        }
        for i in store.images()
    ]
    repos = []
    for name in store.git_repos():
        s = store.repo_summary(name)
        if s is None:
            continue
        repos.append(
            {
                "name": name,
                "url": f"{scheme}://{address}/git/{name}.git",
                "head": s.head,
                "refs": [
                    {"ref": ref, "commit": commit, "subject": s.subjects.get(commit, "")}
                    for ref, commit in s.refs
                ],
            }
        )
    history, warnings = read_history(options)
    served = [store.describe()] if store.describe() else []
    folders = []
    for kind, folder in (("charts", options.charts), ("files", options.files)):
        if folder is not None:
            served.append(f"{kind} {folder.resolve()}")
            url = f"{scheme}://{address}/{kind}/"
            use = f"helm repo add airgap {url}" if kind == "charts" else f"curl -O {url}NAME"
            folders.append({"path": f"/{kind}/", "url": url, "use": use})
    return {
        "served": ", ".join(served),
        "address": address,
        "images": images,
        "repos": repos,
        "folders": folders,
        "history": history,
        "warnings": warnings,
        **store.details(),
    }


# --- running ------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything checked and opened; nothing bound yet."""

    options: ServeOptions
    store: ContentStore
    users: dict[str, bytes] | None
    context: ssl.SSLContext | None


def prepare(options: ServeOptions, *, progress: Progress | None = None) -> Prepared:
    """Refuse what cannot work and open the store (a bundle's signatures are
    checked here, an old bundle indexed, with `progress` in bytes), before
    any port is bound."""
    warnings = check_options(options)
    for warning in warnings:
        log.warning("%s", warning)
    users = load_users(options.htpasswd, options.limits) if options.htpasswd else None
    context = (
        tls_context(options.tls_cert, options.tls_key)
        if options.tls_cert is not None and options.tls_key is not None
        else None
    )
    store = open_store(options, progress)
    try:
        for warning in store.refresh():
            log.warning("%s", warning)
    except BaseException:
        store.close()
        raise
    return Prepared(options, store, users, context)


def run(
    prepared: Prepared,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set). `on_ready` gets the URL
    once the port is bound (with the real port when 0 was asked for)."""
    try:
        asyncio.run(
            _serve(
                prepared.options,
                prepared.store,
                prepared.users,
                prepared.context,
                on_ready,
                stop,
            )
        )
    finally:
        prepared.store.close()


def serve(
    options: ServeOptions,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
) -> None:
    run(prepare(options, progress=progress), on_ready=on_ready, stop=stop)


async def _serve(
    options: ServeOptions,
    store: ContentStore,
    users: dict[str, bytes] | None,
    context: ssl.SSLContext | None,
    on_ready: Callable[[str], None] | None,
    stop: asyncio.Event | None,
) -> None:
    from aiohttp import web

    from airbundle.adapters.serve_http import AppConfig, Server

    listen = parse_listen(options.listen)
    scheme = "https" if context is not None else "http"
    bound: dict[str, str] = {"address": options.listen}
    config = AppConfig(
        store=store,
        page=lambda: page_data(store, options, bound["address"], scheme),
        users=users,
        limits=options.limits,
        folders={
            prefix: folder.resolve()
            for prefix, folder in (("charts", options.charts), ("files", options.files))
            if folder is not None
        },
    )
    server = Server(config)
    runner = web.AppRunner(
        server.app(),
        access_log=logging.getLogger("airbundle.serve.access"),
        access_log_format='%a "%r" %s %b %Tfs',
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, listen.host, listen.port, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(
                f"--listen {options.listen}: cannot listen there: {exc.strerror}"
            ) from None
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        bound["address"] = f"{shown}:{port}"
        done = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, done.set)
        if on_ready is not None:
            on_ready(f"{scheme}://{bound['address']}")
        await done.wait()
    finally:
        await runner.cleanup()
