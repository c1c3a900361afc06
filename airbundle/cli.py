"""The command line: parse, wire, render progress; all work is in airbundle.ops.

Exit codes: 0 ok, 1 verification/integrity failure, 2 usage or spec error,
3 source/target failure (errors.py maps each error class to one).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect as pyinspect
import json
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
import typer.core
from typer.models import CommandFunctionType

from airbundle import __version__
from airbundle.errors import (
    EXIT_IO,
    EXIT_USAGE,
    AirbundleError,
    IntegrityError,
    UsageError,
)
from airbundle.format.text import escape
from airbundle.format.units import human_size

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from airbundle.adapters.registry.transport import Transport
    from airbundle.format.manifest import BundleManifest, ImageEntry
    from airbundle.format.policy import ImagePolicy

# Commands import what they need when they run: the registry client (urllib3,
# ssl) and the export/import pipelines are not loaded for `verify` or `--help`.

# What --help shows for an option whose declaration names no placeholder (typer
# would show <path>, <int range>): one a person reads, by the value's type.
_METAVARS = {"path": "PATH", "int": "N", "int range": "N", "float": "NUMBER", "str": "TEXT"}


class _Command(typer.core.TyperCommand):
    """Help a person reads: arguments as SPEC, not {spec}; every option's value
    with a placeholder (KEY, DIR, N), never typer's <int range> or <list[Path]>."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is not None:
                continue
            if isinstance(param, typer.core.TyperArgument):
                param.metavar = (param.name or "").upper()
            elif not getattr(param, "is_flag", False):
                name = param.type.name
                param.metavar = _METAVARS.get(name, name.upper().replace(" ", "-"))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                name = (param.metavar or "") + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces += param.get_usage_pieces(ctx)
        return pieces


class _Typer(typer.Typer):
    """Every command of the app (and its sub-apps) is a `_Command`."""

    def command(
        self, name: str | None = None, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", _Command)
        return super().command(name, **kwargs)


app = _Typer(
    name="airbundle",
    help="Carry container images and Git repositories across an air gap: "
    "export a signed bundle, verify it anywhere, import it offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts contain [OPTIONAL] syntax that rich would read as markup.
    rich_markup_mode=None,
)
key_app = _Typer(help="Manage signing keys.", no_args_is_help=True)
app.add_typer(key_app, name="key")
cache_app = _Typer(
    help="Manage the export cache (git mirrors, registry blobs).", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")

_state = {"verbose": False, "quiet": False}
P = ParamSpec("P")
R = TypeVar("R")


def _errors_to_exit(func: Callable[P, R]) -> Callable[P, R]:
    """The one place where AirbundleError becomes a message and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except AirbundleError as exc:
            if _state["verbose"]:
                traceback.print_exc()
            _echo(f"airbundle: error: {exc.diagnostics()}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            # A failure no layer anticipated (a disk that vanished, EIO):
            # still one clear line and a non-zero exit, never a traceback.
            if _state["verbose"]:
                traceback.print_exc()
            where = f" ({exc.filename})" if exc.filename else ""
            _echo(f"airbundle: error: {exc.strerror or exc}{where}", err=True)
            raise typer.Exit(EXIT_IO) from None
        except KeyboardInterrupt:
            _echo("airbundle: interrupted; re-run the same command to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


class _Bar:
    """A progress bar as the ops layer sees it: called with bytes done; its
    total may become known only once the work is planned (export)."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def __call__(self, n: int) -> None:
        self._bar.update(n)

    def set_total(self, total: int) -> None:
        self._bar.total = total
        self._bar.refresh()


@contextmanager
def _progress(total: int | None, desc: str, quiet: bool) -> Iterator[_Bar | None]:
    if quiet or _state["quiet"] or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
    ) as bar:
        yield _Bar(bar)


def _bundle_size(path: Path) -> int | None:
    """The bytes a progress bar counts: the bundle file's, or a volume set's
    data volumes' as its signed index lists them (None when that cannot be
    told yet: the command itself then says what is wrong)."""
    from airbundle.adapters.media import open_media

    try:
        media = open_media(path)
        if media.index is not None:
            return sum(v.size for v in media.index.volumes)
        return media.single.stat().st_size if media.single is not None else None
    except (AirbundleError, OSError):
        return None


def _cache_dir(given: Path | None, no_cache: bool) -> Path | None:
    from airbundle.adapters.cache import default_cache_dir

    return None if no_cache else (given or default_cache_dir())


def _echo(text: str, *, err: bool = False) -> None:
    """Everything airbundle prints goes through here: no string from a bundle,
    the media, a registry or git reaches the terminal with a control sequence
    in it (format/text.py)."""
    typer.echo(escape(text, lines=True), err=err)


class _EscapingFormatter(logging.Formatter):
    """Log lines hold what clients send (request lines, names): escaped like
    everything else airbundle prints."""

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record), lines=True)


def _scratch_folder(given: Path | None) -> Path | None:
    """--scratch: an existing folder we may write in (checked before the import starts)."""
    if given is None:
        return None
    if not given.is_dir():
        raise UsageError(f"--scratch {given}: no such folder")
    if not os.access(given, os.W_OK | os.X_OK):
        raise UsageError(f"--scratch {given}: the folder is not writable")
    return given


def _say(quiet: bool, text: str, *, err: bool = False) -> None:
    if not (quiet or _state["quiet"]):
        _echo(text, err=err)


def _warn(text: str, *, label: str = "warning") -> None:
    """A warning or a note: on stderr, and not at all under -q (errors only)."""
    if not _state["quiet"]:
        _echo(f"airbundle: {label}: {text}", err=True)


def _go_quiet(value: bool) -> bool:
    """-q, before or after the command name: errors only. Python warnings
    (urllib3's InsecureRequestWarning for an --insecure-registry host) are
    filtered out, serve logs errors only; stderr itself stays open for errors."""
    if value:
        _state["quiet"] = True
        warnings.simplefilter("ignore")
    return value


def _version(value: bool) -> None:
    if value:
        _echo(f"airbundle {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show tracebacks on errors (before or after the command)."
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing but errors (any command).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _state["verbose"] = verbose
    _state["quiet"] = False  # main() may run more than once in a process
    _go_quiet(quiet)


_VOLUME_FILE = re.compile(r".+\.(\d{3}|p\d{2})")
ParityOpt = Annotated[
    str | None,
    typer.Option(
        metavar="N|P%",
        help="Also write this many parity volumes (NAME.p01...), or a percentage of the "
        "data volumes such as 10% (rounded up): any that many lost or damaged volumes "
        "can be rebuilt."
    ),
]
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise UsageError(f"invalid duration {text!r}: use a number and s, m, h, d or w (30d)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


NestedOpt = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="For registries that limit nesting: at most this many path components "
        "(the rest joined with '-').",
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Print nothing but errors (and what the command is asked for).",
        callback=_go_quiet,
    ),
]
TrustOpt = Annotated[
    list[Path],
    typer.Option(
        "--trust",
        metavar="KEY",
        help="Trusted public key file or OpenSSH allowed_signers file (repeatable).",
    ),
]
ThresholdOpt = Annotated[
    int, typer.Option("--threshold", metavar="N", help="Distinct trusted signatures required.")
]
PassOpt = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        metavar="FILE",
        help="File whose first line is the key's passphrase (or set AIRBUNDLE_PASSPHRASE).",
    ),
]


BundleArg = Annotated[
    Path,
    typer.Argument(
        metavar="BUNDLE",
        help="A bundle: its file, a volume set's NAME.volumes file, or the folder holding the set.",
    ),
]

PolicyOpt = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        metavar="FILE",
        help="Image policy (containers-policy.json): every image must satisfy the scope "
        "that applies (reject, sigstoreSigned with keyPath/keyData, ...).",
    ),
]


def _positive(duration: timedelta, option: str) -> float:
    if duration.total_seconds() <= 0:
        raise UsageError(f"{option} must be longer than 0s")
    return duration.total_seconds()


def _image_policy(path: Path | None) -> ImagePolicy | None:
    from airbundle.ops.vetting import load_image_policy

    return load_image_policy(path) if path is not None else None


def _signing_keys(paths: list[Path], passphrase_file: Path | None) -> tuple[Ed25519PrivateKey, ...]:
    """Every --key, decrypted with --passphrase-file or $AIRBUNDLE_PASSPHRASE."""
    from airbundle.ops import keys as keyops

    passphrase = keyops.read_passphrase(passphrase_file)
    return tuple(keyops.load_signing_key(k, passphrase=passphrase) for k in paths)


@dataclasses.dataclass(frozen=True)
class RegistryOptions:
    """--ca-file, --cert, --cert-key and --insecure-registry, as one value."""

    ca_file: Path | None = None
    cert: Path | None = None
    cert_key: Path | None = None
    insecure: tuple[str, ...] = ()

    def transport(self) -> Transport:
        from airbundle.adapters.registry.transport import TLSConfig, Transport

        ca = self.ca_file
        if ca is None and os.environ.get("SSL_CERT_FILE"):
            ca = Path(os.environ["SSL_CERT_FILE"])
        if self.cert_key is not None and self.cert is None:
            raise UsageError("--cert-key needs --cert")
        if self.insecure and not _state["quiet"]:
            from urllib3.exceptions import InsecureRequestWarning

            # urllib3 warns on every request to a host without verified TLS
            # (65 lines for one import); the host was named on purpose: once each.
            warnings.filterwarnings("once", category=InsecureRequestWarning)
        return Transport(TLSConfig(ca, self.cert, self.cert_key, frozenset(self.insecure)))


NO_REGISTRY_OPTIONS = RegistryOptions()


CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        metavar="FILE",
        help="CA bundle for registry TLS (default: system CAs, or SSL_CERT_FILE).",
    ),
]
CertOpt = Annotated[
    Path | None, typer.Option("--cert", metavar="FILE", help="TLS client certificate (PEM).")
]
CertKeyOpt = Annotated[
    Path | None, typer.Option("--cert-key", metavar="FILE", help="TLS client key (PEM).")
]
InsecureOpt = Annotated[
    list[str],
    typer.Option(
        "--insecure-registry",
        metavar="HOST[:PORT]",
        help="Allow plain HTTP / unverified TLS for HOST[:PORT] (repeatable).",
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR", help="Cache of git mirrors and registry blobs (default: ~/.cache/airbundle)."
    ),
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Fetch repos into scratch space, not the cache.")
]

# The options a RegistryOptions parameter stands for, in the order --help shows them.
_REGISTRY_PARAMETERS: tuple[tuple[str, Any, Any], ...] = (
    ("ca_file", CaOpt, None),
    ("cert", CertOpt, None),
    ("cert_key", CertKeyOpt, None),
    ("insecure_registry", InsecureOpt, []),
)


def _registry_options(func: Callable[..., R]) -> Callable[..., R]:
    """Declare the registry/TLS options once: the command's `tls` parameter
    (a RegistryOptions) becomes --ca-file, --cert, --cert-key and
    --insecure-registry on the command line, in its place."""
    signature = pyinspect.signature(func, eval_str=True)
    parameters: list[pyinspect.Parameter] = []
    for parameter in signature.parameters.values():
        if parameter.name != "tls":
            parameters.append(parameter)
            continue
        parameters += [
            pyinspect.Parameter(
                name, pyinspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=kind
            )
            for name, kind, default in _REGISTRY_PARAMETERS
        ]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        tls = RegistryOptions(
            kwargs.pop("ca_file", None),
            kwargs.pop("cert", None),
            kwargs.pop("cert_key", None),
            tuple(kwargs.pop("insecure_registry", None) or ()),
        )
        return func(*args, tls=tls, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return wrapper


@app.command()
@_errors_to_exit
@_registry_options
def export(
    spec: Annotated[Path, typer.Argument(metavar="SPEC", help="Bundle spec (YAML).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="Bundle file to write.")
    ],
    key: Annotated[
        list[Path],
        typer.Option("--key", metavar="KEY", help="Signing key (OpenSSH ed25519); repeatable."),
    ],
    passphrase_file: PassOpt = None,
    level: Annotated[
        int, typer.Option(metavar="1-19", help="zstd compression level.", min=1, max=19)
    ] = 3,
    threads: Annotated[
        int, typer.Option(metavar="N", help="Compression threads (-1: one per core).")
    ] = -1,
    channel: Annotated[
        str, typer.Option(metavar="NAME", help="Release channel recorded in the manifest.")
    ] = "default",
    sequence: Annotated[
        int | None, typer.Option(help="Sequence number (default: creation time).")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(metavar="DURATION", help="Expiry after creation, e.g. 30d.")
    ] = None,
    tls: RegistryOptions = NO_REGISTRY_OPTIONS,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    check_images: Annotated[
        bool,
        typer.Option(
            "--check-images", help="Scan the carried repos for image references the bundle lacks."
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="With --check-images: fail if any referenced image is missing."
        ),
    ] = False,
    split_size: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE",
            help="Cut into volumes of this size: 4GiB, 700MB, or fat32, dvd, bd25, bd50.",
        ),
    ] = None,
    parity: ParityOpt = None,
    lock: Annotated[
        Path | None,
        typer.Option(
            metavar="LOCK",
            help="Export exactly the digests and commits pinned by `airbundle plan`.",
        ),
    ] = None,
    since: Annotated[
        list[Path],
        typer.Option(
            metavar="BUNDLE",
            help="Incremental: leave out what this earlier bundle (or its manifest.json, or an "
            "inventory from the other side) shows is already there. Repeatable.",
        ),
    ] = [],  # noqa: B006
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing bundle or volume set of that name.")
    ] = False,
    policy: PolicyOpt = None,
    vet_command: Annotated[
        list[str],
        typer.Option(
            metavar="COMMAND",
            help="Run this command on every image ({layout}: an OCI layout of just that image, "
            "{ref}, {digest}; no shell unless you write one); exit 0 passes, its stdout is "
            "carried as the image's report. Repeatable.",
        ),
    ] = [],  # noqa: B006
    vet_warn: Annotated[
        bool,
        typer.Option(
            "--vet-warn", help="A failing vet command is recorded and warned about, not fatal."
        ),
    ] = False,
    vet_timeout: Annotated[
        str,
        typer.Option(
            metavar="DURATION", help="A vet command still running after this fails, e.g. 10m."
        ),
    ] = "30m",
    quiet: QuietOpt = False,
) -> None:
    """Build a signed bundle from a spec."""
    from airbundle.format.volumes import parse_parity, parse_size
    from airbundle.ops.export import ExportOptions, export_bundle
    from airbundle.ops.plan import apply_lock, read_lock
    from airbundle.ops.vetting import VettingOptions, parse_command

    signing = _signing_keys(key, passphrase_file)
    vetting = VettingOptions(
        policy=_image_policy(policy),
        commands=tuple(dict.fromkeys(parse_command(c) for c in vet_command)),
        warn=vet_warn,
        timeout=_positive(parse_duration(vet_timeout), "--vet-timeout"),
    )
    from airbundle.ops.specfile import load_spec  # yaml: not loaded for serve

    loaded = load_spec(spec)
    if lock is not None:
        loaded = apply_lock(loaded, read_lock(lock))
    options = ExportOptions(
        output=output,
        keys=signing,
        level=level,
        threads=threads,
        channel=channel,
        sequence=sequence,
        expires_in=parse_duration(expires) if expires else None,
        transport=tls.transport(),
        cache_dir=_cache_dir(cache_dir, no_cache),
        check_images=check_images or strict,
        strict=strict,
        split_size=parse_size(split_size) if split_size else None,
        parity=parse_parity(parity) if parity else None,
        since=tuple(since),
        force=force,
        vetting=vetting,
    )
    with _progress(None, "export", quiet) as progress:
        result = export_bundle(
            loaded,
            options,
            progress=progress,
            on_total=progress.set_total if progress is not None else None,
        )
    for warning in result.warnings:
        _warn(warning)
    if result.manifest.scan is not None:
        for issue in result.manifest.scan.missing:
            _warn(
                f"{issue.file}:{issue.line}: "
                f"{'' if issue.kind.endswith('-helm') else 'image '}{issue.ref} is "
                "referenced but not in the bundle"
            )
        for unread in result.manifest.scan.not_scanned:
            _warn(f"{unread.file}: not scanned ({unread.reason})")
    m = result.manifest
    _say(
        quiet,
        f"wrote {_written(result.path, result.volumes, result.size)}: {len(m.images)} image(s), "
        f"{len(m.repos)} repo(s), "
        + (f"{len(m.charts)} chart(s), " if m.charts else "")
        + (f"{len(m.files)} file(s), " if m.files else "")
        + f"{len(m.members)} members, manifest {result.manifest_digest}",
    )


def _written(path: Path, volumes: tuple[Path, ...], size: int) -> str:
    """`NAME.airbundle (26.3 MiB)`, or for a volume set `4 volumes
    NAME.airbundle.001…004 (3.2 GiB) + NAME.airbundle.volumes`."""
    if not volumes:
        return f"{path} ({human_size(size)})"
    first, last = volumes[0], volumes[-1]
    names = str(first) if len(volumes) == 1 else f"{first}…{last.suffix.lstrip('.')}"
    count = f"{len(volumes)} volume{'s' if len(volumes) > 1 else ''}"
    return f"{count} {names} ({human_size(size)}) + {path.name}"


@app.command()
@_errors_to_exit
def verify(
    bundle: BundleArg,
    trust: TrustOpt,
    threshold: ThresholdOpt = 1,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Check a bundle's signatures and every member.

    Signatures first, then every member's size and digest; exit 0 only if all
    holds. BUNDLE is a bundle file, a volume index (NAME.volumes) or a folder holding
    one: the whole set is checked. Given a single volume (NAME.003), only that
    volume is checked against the signed index."""
    try:
        _verify(bundle, trust, threshold, json_output, quiet)
    except (AirbundleError, OSError) as exc:
        if json_output:
            _echo(json.dumps(_failure_report(bundle, exc), indent=1))
        raise


def _failure_report(bundle: Path, exc: AirbundleError | OSError) -> dict[str, Any]:
    """verify --json when the answer is no: what failed, as fields, with the
    exit code the command ends with (the same line still goes to stderr)."""
    if isinstance(exc, AirbundleError):
        error: dict[str, Any] = {
            "kind": type(exc).__name__,
            "exitCode": exc.exit_code,
            "message": exc.message,
            "hint": exc.hint,
            "member": exc.member,
            "volumes": list(exc.volumes),
        }
    else:
        error = {
            "kind": "OSError",
            "exitCode": EXIT_IO,
            "message": exc.strerror or str(exc),
            "hint": None,
            "member": None,
            "volumes": [],
            "file": exc.filename,
        }
    return {"ok": False, "bundle": str(bundle), "error": error}


def _verify(
    bundle: Path, trust: list[Path], threshold: int, json_output: bool, quiet: bool
) -> None:
    from airbundle.adapters.media import open_media
    from airbundle.format.manifest import format_time
    from airbundle.ops import keys as keyops
    from airbundle.ops.verify import load_policy, verify_bundle
    from airbundle.ops.volumes import check_one_volume, rebuilt_notes

    policy = load_policy(keyops.load_trust(trust), threshold)
    if _VOLUME_FILE.fullmatch(bundle.name) and open_media(bundle).index is not None:
        check = check_one_volume(bundle, policy)
        if not check.ok:
            raise IntegrityError(
                f"volume {check.name} is damaged: {check.problem}",
                hint="copy it again from the original media, or rebuild it with "
                "`airbundle repair` if the set has parity volumes",
                volumes=(check.name,),
            )
        if json_output:
            _echo(json.dumps({"ok": True, "bundle": str(bundle), "volume": check.name}, indent=1))
            return
        _say(quiet, f"OK volume {check.name} matches the signed volume index")
        return
    with _progress(_bundle_size(bundle), "verify", quiet or json_output) as progress:
        result = verify_bundle(bundle, policy, progress=progress)
    auth = result.authenticated
    if json_output:
        _echo(
            json.dumps(
                {
                    "ok": True,
                    "bundle": str(bundle),
                    "manifestDigest": str(auth.manifest_digest),
                    "members": result.members,
                    "bytes": result.bytes,
                    "signers": [s.public_key.fingerprint for s in auth.signers],
                    "rebuiltFromParity": result.rebuilt,
                    "damagedParity": result.parity_damaged,
                },
                indent=1,
            )
        )
        return
    expires = auth.manifest.bundle.expires
    if expires is not None and expires < datetime.now(UTC):
        _warn(
            f"the bundle expired on {format_time(expires)}; "
            "import will refuse it without --allow-expired"
        )
    signers = ", ".join(s.public_key.fingerprint for s in auth.signers)
    for note in rebuilt_notes(result.rebuilt):
        _echo(f"airbundle: WARNING: {note}", err=True)
    for name, problem in sorted(result.parity_damaged.items()):
        _echo(
            f"airbundle: WARNING: parity volume {name} is "
            f"{'missing' if problem == 'missing' else 'damaged: ' + problem}",
            err=True,
        )
    if result.rebuilt or result.parity_damaged:
        _echo(
            "airbundle: run `airbundle repair` to write the lost volumes again", err=True
        )
    rebuilt = f" ({len(result.rebuilt)} volume(s) rebuilt from parity)" if result.rebuilt else ""
    _say(
        quiet,
        f"OK {bundle}: {result.members} members, {human_size(result.bytes)} verified{rebuilt}; "
        f"signed by {signers}",
    )


@app.command()
@_errors_to_exit
def inspect(
    bundle: BundleArg,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what a bundle holds.

    Reads only its manifest; checks that the signatures are valid, not whether
    they are trusted (verify --trust does)."""
    from airbundle.format.manifest import format_time
    from airbundle.ops.inspect import inspect_bundle

    info = inspect_bundle(bundle)
    if json_output:
        _echo(json.dumps(info.to_json(), indent=1))
        return
    m = info.manifest
    b = m.bundle
    lines = [
        f"bundle    {b.name}  id {b.id}",
        f"created   {format_time(b.created)}  by {escape(b.tool)}",
        f"channel   {b.channel}  sequence {b.sequence}  expires "
        f"{format_time(b.expires) if b.expires else 'never'}",
        f"size      {human_size(info.file_size)} on disk, {human_size(m.total_size)} of content, "
        f"{len(m.members)} members",
        "signatures (validity only; trust is checked by verify --trust):",
    ]
    lines += [
        f"  {s.member}  {s.fingerprint or '?'}  "
        f"{'valid' if s.valid else 'INVALID: ' + escape(str(s.problem))}"
        for s in info.signatures
    ]
    lines.append(f"images ({len(m.images)}):")
    lines += [
        f"  {i.ref}  {i.digest}  {_image_size(i)}  {escape(','.join(i.platforms)) or '-'}  "
        f"from {escape(i.source)}"
        + (f"  (requested by chart {escape(', '.join(i.requested_by))})" if i.requested_by else "")
        for i in m.images
    ]
    lines += _vetting_lines(m)
    lines.append(f"charts ({len(m.charts)}):")
    lines += [
        f"  {c.name} {c.version}  as {c.ref}  .tgz {c.chart_digest} {human_size(c.chart_size)}  "
        f"from {c.source}"
        for c in m.charts
    ]
    carried_files = set(m.member_index)
    lines.append(f"files ({len(m.files)}):")
    lines += [
        f"  {f.name}  {f.digest}  {human_size(f.size)}"
        + ("  executable" if f.executable else "")
        + f"  from {f.source}"
        + ("" if f.member in carried_files else "  (not carried: in the base)")
        for f in m.files
    ]
    if m.scan is not None:
        from airbundle.format.imagescan import count_line

        counts = count_line(
            m.scan.references, m.scan.files, len(m.scan.missing), len(m.scan.not_scanned)
        )
        lines.append(f"image scan: {counts}")
        lines += [
            f"  MISSING {escape(s.ref)}  at {escape(s.file)}:{s.line} ({escape(s.kind)})"
            for s in m.scan.missing
        ]
        lines += [
            f"  NOT SCANNED {escape(u.file)} ({escape(u.reason)})" for u in m.scan.not_scanned
        ]
    lines.append(f"repos ({len(m.repos)}):")
    for r in m.repos:
        lines.append(f"  {r.name}  from {escape(r.url)}")
        lines += [f"    {ref.name}  {ref.target}" for ref in r.refs]
    _echo("\n".join(lines))


def _image_size(image: ImageEntry) -> str:
    """inspect's size column: the whole image, which bundles from before
    `totalSize` do not record (their root manifest's size would mislead)."""
    return human_size(image.total_size) if image.total_size is not None else "?"


def _vetting_lines(m: BundleManifest) -> list[str]:
    """inspect: what the exporter checked about each image (shown, not judged)."""
    record = m.vetting
    if record is None:
        return []
    import shlex

    policy = f"policy {record.policy}" if record.policy else "no policy"
    warn = " (failures recorded, --vet-warn)" if record.warn_only else ""
    lines = [f"vetting ({policy}; {len(record.commands)} vet command(s){warn}):"]
    lines += [f"  command {n}: {shlex.join(c)}" for n, c in enumerate(record.commands)]
    for e in record.images:
        scope = f"  scope {e.scope} as {e.identity}" if e.scope else ""
        lines.append(f"  {e.ref}{scope}")
        for s in e.signatures:
            how = (
                f"verified: key {s.key_fingerprint} ({s.key_type}), identity {s.identity}"
                if s.verified
                else "not verified"
            )
            lines.append(f"    signature {s.where}: {how}")
        for v in e.vets:
            cut = f", cut from {human_size(v.output_bytes)}" if v.truncated else ""
            size = f"{human_size(v.report_size)}{cut}"
            lines.append(f"    vet {v.command}: {v.outcome()}, report {v.report} ({size})")
    return lines


@app.command("import")
@_errors_to_exit
@_registry_options
def import_(
    bundle: BundleArg,
    trust: TrustOpt,
    registry: Annotated[
        str | None,
        typer.Option(
            metavar="TARGET",
            help="Image target: HOST[:PORT][/PREFIX] (a registry) or oci:DIR (an OCI layout).",
        ),
    ] = None,
    git_target: Annotated[
        str | None,
        typer.Option(
            "--git",
            metavar="TARGET",
            help="Repo target: a folder of bare repos, or a URL template with {name}, "
            "e.g. git://host/{name}.git",
        ),
    ] = None,
    threshold: ThresholdOpt = 1,
    force: Annotated[
        bool, typer.Option("--force", help="Allow refs to move non-fast-forward.")
    ] = False,
    max_nested_paths: NestedOpt = None,
    keep_source_host: Annotated[
        bool,
        typer.Option(
            "--keep-source-host",
            help="Keep the source registry host as the first path component in the target.",
        ),
    ] = False,
    report: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Write the import report (JSON) here.")
    ] = None,
    channel: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="The channel this target takes bundles from; a bundle for another is refused.",
        ),
    ] = "default",
    allow_expired: Annotated[
        bool,
        typer.Option(
            "--allow-expired",
            help="Import even if the bundle has expired (recorded in the state's history).",
        ),
    ] = False,
    allow_rollback: Annotated[
        bool,
        typer.Option(
            "--allow-rollback",
            help="Import even if older than the last import (recorded in the state's history).",
        ),
    ] = False,
    emit_mirror_config: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Write mirror configuration for the imported repositories into this folder.",
        ),
    ] = None,
    mirror_scope: Annotated[
        str,
        typer.Option(
            metavar="repository|registry",
            help="Mirror entries per repository or per upstream registry.",
        ),
    ] = "repository",
    allow_other_refs: Annotated[
        bool,
        typer.Option("--allow-other-refs", help="Also move refs outside refs/heads and refs/tags."),
    ] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Where the import state lives (default: inside an oci: target, else "
            "~/.local/state/airbundle).",
        ),
    ] = None,
    files: Annotated[
        Path | None,
        typer.Option(
            "--files", metavar="DIR", help="Folder the bundle's files land in (under their names)."
        ),
    ] = None,
    charts: Annotated[
        Path | None,
        typer.Option(
            "--charts",
            metavar="DIR",
            help="Also write the bundle's charts here as a static Helm repository "
            "(.tgz files and index.yaml).",
        ),
    ] = None,
    tls: RegistryOptions = NO_REGISTRY_OPTIONS,
    image_policy: PolicyOpt = None,
    require_vetted: Annotated[
        bool,
        typer.Option(
            "--require-vetted", help="Refuse the bundle if an image lacks a passing vet record."
        ),
    ] = False,
    scratch: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="A volume set with parity missing volumes: rebuild them into this folder "
            "(default: rebuilt on the fly as they are read, nothing written)."
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Verify a bundle and import it (safe to re-run).

    Into a registry or an OCI layout, git, a files folder and a chart repository.

    With --policy, every carried image is judged again, offline, under this side's
    image policy from the signatures the bundle carries, before anything is written."""
    from airbundle.ops import keys as keyops
    from airbundle.ops.importer import ImportOptions, import_bundle
    from airbundle.ops.verify import load_policy

    policy = load_policy(keyops.load_trust(trust), threshold)
    options = ImportOptions(
        policy=policy,
        registry=registry,
        git=git_target,
        force=force,
        keep_source_host=keep_source_host,
        max_nested_paths=max_nested_paths,
        report=report,
        channel=channel,
        allow_expired=allow_expired,
        allow_rollback=allow_rollback,
        state_dir=state_dir,
        allow_other_refs=allow_other_refs,
        emit_mirror_config=emit_mirror_config,
        mirror_scope=mirror_scope,
        transport=tls.transport(),
        image_policy=_image_policy(image_policy),
        require_vetted=require_vetted,
        files=files,
        charts=charts,
        scratch=_scratch_folder(scratch),
    )
    with _progress(_bundle_size(bundle), "import", quiet) as progress:
        result = import_bundle(bundle, options, progress=progress)
    for note in result.notes:
        _warn(note, label="WARNING")
    if result.noop:
        _say(
            quiet,
            f"already imported: {bundle} (channel {result.channel}, sequence "
            f"{result.sequence}, manifest {result.manifest_digest}); nothing to do",
        )
        return
    _say(
        quiet,
        f"imported {bundle}: {len(result.images)} image(s) "
        f"({result.blobs_written} blobs written, {result.blobs_present} already present), "
        f"{len(result.repos)} repo(s)",
    )
    for image in result.images:
        _say(quiet, f"  {escape(image['source'])} -> {escape(image['target'])}  {image['digest']}")
    for repo in result.repos:
        _say(quiet, f"  {escape(str(repo['name']))} -> {escape(str(repo['target']))}")
    for f in result.files:
        _say(
            quiet,
            f"  file {escape(str(f['name']))} -> {escape(str(f['target']))}"
            + ("" if f["written"] else " (unchanged)"),
        )
    for c in result.charts:
        name, version = escape(str(c["name"])), escape(str(c["version"]))
        _say(quiet, f"  chart {name} {version} -> {escape(str(c['target']))}")
    if result.report_path:
        _say(quiet, f"report: {result.report_path}")


@app.command()
@_errors_to_exit
@_registry_options
def probe(
    registry: Annotated[
        str,
        typer.Option(metavar="HOST[:PORT][/PREFIX]", help="The registry to ask, as for import."),
    ],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    tls: RegistryOptions = NO_REGISTRY_OPTIONS,
    quiet: QuietOpt = False,
) -> None:
    """Ask a registry what it accepts.

    Push-to-create, nested paths, sparse indexes, the referrers API, a layer
    listed twice: found out with throw-away pushes in PREFIX/airbundle-probe.
    import asks the same before it pushes."""
    from airbundle.ops.probe import probe_registry

    result = probe_registry(registry, transport=tls.transport())
    if json_output:
        _echo(json.dumps(result.to_json(), indent=1))
        return
    _echo(result.describe())
    for line in result.cleanup:
        _say(quiet, f"  note: {line}")


@app.command()
@_errors_to_exit
@_registry_options
def inventory(
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="Inventory file to write.")
    ],
    registry: Annotated[
        str | None,
        typer.Option(metavar="TARGET", help="Image target: HOST[:PORT][/PREFIX] or oci:DIR."),
    ] = None,
    git_target: Annotated[
        str | None,
        typer.Option(
            "--git",
            metavar="TARGET",
            help="Repo target: a folder of bare repos or a URL template with {name}.",
        ),
    ] = None,
    repo: Annotated[
        list[str],
        typer.Option(metavar="NAME", help="Repo names to list (needed with a URL template)."),
    ] = [],  # noqa: B006
    files: Annotated[
        Path | None,
        typer.Option(
            "--files", metavar="DIR", help="A files folder import wrote (its files' sha256)."
        ),
    ] = None,
    tls: RegistryOptions = NO_REGISTRY_OPTIONS,
    quiet: QuietOpt = False,
) -> None:
    """List what the targets hold, for `export --since`.

    The blobs, ref tips and files the targets already hold (digests only, no
    content), to carry back to the connected side."""
    from airbundle.adapters.fsutil import write_atomic
    from airbundle.ops.inventory import take_inventory

    inv = take_inventory(
        registry=registry,
        git_target=git_target,
        repo_names=list(repo),
        transport=tls.transport(),
        files=files,
    )
    write_atomic(output, inv.to_bytes())
    _say(
        quiet,
        f"wrote {output}: {len(inv.blobs)} blob(s), {len(inv.repos)} repo(s), "
        f"{len(inv.files)} file(s)",
    )


@app.command("diff")
@_errors_to_exit
def diff_command(
    old: Annotated[
        Path, typer.Argument(metavar="OLD", help="The earlier bundle (as for inspect).")
    ],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The later bundle.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what changed between two bundles.

    Images added, removed and updated (tags moving to new digests), repo refs
    moved, charts and files, and the new bytes: what a reviewer reads before
    approving."""
    from airbundle.format.diff import diff
    from airbundle.ops.inspect import inspect_bundle

    d = diff(inspect_bundle(old).manifest, inspect_bundle(new).manifest)
    if json_output:
        _echo(json.dumps(d.to_json(), indent=1))
        return
    lines = [f"+ image {ref}  {dg}" for ref, dg in d.images_added]
    lines += [f"- image {ref}  {dg}" for ref, dg in d.images_removed]
    lines += [f"~ image {ref}  {a} -> {b}" for ref, a, b in d.images_updated]
    lines += [f"+ ref {repo} {ref}  {oid}" for repo, ref, oid in d.refs_added]
    lines += [f"- ref {repo} {ref}  {oid}" for repo, ref, oid in d.refs_removed]
    lines += [f"~ ref {repo} {ref}  {a[:12]} -> {b[:12]}" for repo, ref, a, b in d.refs_moved]
    lines += [f"+ chart {n} {v}  {ref}" for n, v, ref in d.charts_added]
    lines += [f"- chart {n} {v}  {ref}" for n, v, ref in d.charts_removed]
    lines += [f"~ chart {n} {v}  {a} -> {b}" for n, v, a, b in d.charts_changed]
    lines += [f"+ file {n}  {dg}" for n, dg in d.files_added]
    lines += [f"- file {n}  {dg}" for n, dg in d.files_removed]
    lines += [f"~ file {n}  {a} -> {b}" for n, a, b in d.files_changed]
    lines.append(f"{d.new_blobs} blob(s) not in the earlier bundle, {human_size(d.new_blob_bytes)}")
    _echo("\n".join(lines) if not d.empty else "no image, ref, chart or file changes\n" + lines[-1])


@app.command()
@_errors_to_exit
@_registry_options
def plan(
    spec: Annotated[Path, typer.Argument(metavar="SPEC", help="Bundle spec (YAML).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Lock file to write (default: SPEC.lock beside the spec).",
        ),
    ] = None,
    since: Annotated[
        list[Path],
        typer.Option(
            metavar="BUNDLE",
            help="Plan an incremental export on top of this bundle or inventory.",
        ),
    ] = [],  # noqa: B006
    split_size: Annotated[
        str | None, typer.Option(metavar="SIZE", help="Estimate volumes of this size.")
    ] = None,
    tls: RegistryOptions = NO_REGISTRY_OPTIONS,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    policy: PolicyOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Resolve a spec, show the bundle's size, write a lock.

    Resolve every reference to a digest and commit, show what would be carried
    and how big, and write a lock file that `export --lock` reproduces. Repos are
    fetched into the export's git cache, so their history can be measured and the
    export that follows fetches only what moved. With --policy, each image's verdict
    (from manifests and signatures only); if one is rejected, no lock is written
    and the exit code is 1."""
    from airbundle.adapters.fsutil import write_atomic
    from airbundle.errors import VettingError
    from airbundle.format.volumes import parse_size
    from airbundle.ops.plan import make_plan
    from airbundle.ops.specfile import load_spec  # yaml: not loaded for serve

    loaded = load_spec(spec)
    size = parse_size(split_size) if split_size else None
    result = make_plan(
        loaded,
        since=tuple(since),
        split_size=size,
        transport=tls.transport(),
        cache_dir=_cache_dir(cache_dir, no_cache),
        policy=_image_policy(policy),
    )
    lines = []
    for i in result.images:
        lines.append(
            f"  {i.ref}  {i.digest}  {human_size(i.size)} of {human_size(i.total)}  "
            f"{','.join(i.platforms) or '-'}"
            + (f"  (requested by chart {', '.join(i.requested_by)})" if i.requested_by else "")
        )
        if i.subset_digest is not None:
            lines.append(f"    carries subset index {i.subset_digest} beside it")
        if i.policy is not None:
            lines.append(f"    policy: {i.policy}")
    for c in result.charts:
        lines.append(
            f"  chart {c.name} {c.version} ({c.text})  as {c.ref}  .tgz {c.digest}  "
            f"{human_size(c.size)} of {human_size(c.total)}"
            + (f", {len(c.images)} image(s)" if c.images else "")
        )
        if c.policy is not None:
            lines.append(f"    policy: {c.policy}")
    lines += [
        f"  file {f.name}  {f.digest}  {human_size(f.size)}" for g in result.files for f in g.files
    ]
    for repo in result.repos:
        lines += [f"  {repo.name} {ref}  {oid}" for ref, oid in sorted(repo.refs.items())]
        lines.append(f"  {repo.name}: {human_size(repo.size)} of git history to carry")
    volumes = (
        f", {result.volumes} volume(s) of {human_size(size)}"
        if result.volumes and size is not None
        else ""
    )
    history = sum(r.size for r in result.repos)
    lines.append(
        f"images: {human_size(result.image_bytes)}, git history: {human_size(history)}; "
        f"the bundle: about {human_size(result.bundle_bytes)}{volumes}"
    )
    _say(quiet, "\n".join(lines))
    for note in result.notes:
        _warn(note, label="note")
    if result.rejected:
        raise VettingError(
            f"the image policy {policy} would reject {len(result.rejected)} image(s): "
            + ", ".join(i.ref for i in result.rejected),
            hint="no lock file was written; the reasons are listed above",
        )
    target = output or spec.with_name(spec.name + ".lock")
    write_atomic(target, result.lock_bytes())
    _say(quiet, f"wrote {target}")


@app.command()
@_errors_to_exit
def kit(
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="New folder for the kit.")
    ],
    key: Annotated[
        list[Path], typer.Option("--key", metavar="KEY", help="Key(s) to sign SHA256SUMS.")
    ],
    python_version: Annotated[
        str | None,
        typer.Option(
            metavar="X.Y", help="The disconnected host's Python, e.g. 3.11 (default: this one)."
        ),
    ] = None,
    platform: Annotated[
        list[str],
        typer.Option(
            metavar="TAG", help="Wheel platform tags, e.g. manylinux2014_x86_64 (repeatable)."
        ),
    ] = [],  # noqa: B006
    wheelhouse: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Take dependency wheels from this folder instead of the package index.",
        ),
    ] = None,
    passphrase_file: PassOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Write an offline installer for airbundle.

    airbundle and its dependencies as wheels, a signed SHA256SUMS and
    INSTALL.txt, to carry along with the bundles."""
    from airbundle.ops.kit import build_kit, check_python_version

    keys = _signing_keys(key, passphrase_file)
    result = build_kit(
        output,
        keys,
        python_version=check_python_version(python_version) if python_version else None,
        platforms=tuple(platform),
        wheelhouse=wheelhouse,
    )
    _say(quiet, f"wrote {result.folder}: {len(result.wheels)} wheels; see INSTALL.txt")


@app.command()
@_errors_to_exit
def split(
    bundle: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="Bundle file to cut into volumes.")
    ],
    size: Annotated[
        str,
        typer.Option(
            "--size", metavar="SIZE", help="Volume size: 4GiB, 700MB, or fat32, dvd, bd25, bd50."
        ),
    ],
    key: Annotated[
        list[Path], typer.Option("--key", metavar="KEY", help="Key(s) to sign the volume index.")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Folder for the volumes (default: beside the bundle).",
        ),
    ] = None,
    passphrase_file: PassOpt = None,
    parity: ParityOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Cut a bundle into volumes plus a signed index.

    Media-sized volumes of an existing bundle, without exporting again."""
    from airbundle.format.volumes import parse_parity, parse_size
    from airbundle.ops.volumes import split_bundle

    keys = _signing_keys(key, passphrase_file)
    index = split_bundle(
        bundle,
        parse_size(size),
        keys,
        folder=output,
        parity=parse_parity(parity) if parity else None,
    )
    _say(quiet, f"wrote {index} and its volumes")


@app.command()
@_errors_to_exit
def repair(
    volume_set: Annotated[
        Path,
        typer.Argument(
            metavar="SET", help="Volume index (NAME.volumes), one of its volumes, or its folder."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", metavar="DIR", help="Folder for the rebuilt volumes."),
    ],
    trust: TrustOpt,
    threshold: ThresholdOpt = 1,
    quiet: QuietOpt = False,
) -> None:
    """Rebuild lost or damaged volumes from parity volumes.

    Byte for byte: every volume is checked against the signed index; those that fail are
    rebuilt from the others and written into OUTPUT only once they match it."""
    from airbundle.ops import keys as keyops
    from airbundle.ops.verify import load_policy
    from airbundle.ops.volumes import repair_volumes

    policy = load_policy(keyops.load_trust(trust), threshold)
    result = repair_volumes(volume_set, output, policy)
    if not result.written:
        _say(quiet, f"OK {volume_set}: all {result.whole} volumes match the signed index")
        return
    for name, problem in sorted(result.written.items()):
        _say(quiet, f"rebuilt {output / name} (it was {problem})")
    _say(
        quiet,
        f"wrote {len(result.written)} volume(s) into {output}, each matching the signed index",
    )


@app.command()
@_errors_to_exit
def join(
    index: Annotated[
        Path, typer.Argument(metavar="INDEX", help="Volume index (NAME.volumes) or its folder.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="Bundle file to write.")
    ],
    quiet: QuietOpt = False,
) -> None:
    """Join a volume set back into one bundle file.

    Every volume is checked against the signed index."""
    from airbundle.ops.volumes import join_volumes

    _say(quiet, f"wrote {join_volumes(index, output)}")


@app.command()
@_errors_to_exit
def sign(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle file to approve.")],
    key: Annotated[
        Path, typer.Option("--key", metavar="KEY", help="Your signing key (OpenSSH ed25519).")
    ],
    passphrase_file: PassOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Add an approval signature (co-sign).

    The bundle's content is not rewritten."""
    from airbundle.ops.sign import sign_bundle

    (private,) = _signing_keys([key], passphrase_file)
    result = sign_bundle(bundle, private)
    if result.added:
        _say(
            quiet, f"signed {bundle} as {result.fingerprint}; {result.signatures} signature(s) now"
        )
    else:
        _say(quiet, f"{bundle} is already signed by {result.fingerprint}; nothing to do")


@app.command()
@_errors_to_exit
def scan(
    path: Annotated[
        Path, typer.Argument(metavar="DIR", help="A folder of manifests (a git working tree).")
    ],
    bundle: Annotated[
        Path | None,
        typer.Option(metavar="BUNDLE", help="Report only references this bundle does not carry."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """List the image and chart references in a folder.

    The image references in Kubernetes, kustomize, Tekton, Helm values, Flux and
    Argo CD files (YAML and JSON), and the charts Flux HelmReleases and Argo CD
    Applications install, with file and line, and the files it could not read;
    with --bundle, only those the bundle lacks (exit 1 if any)."""
    from airbundle.format.chartscan import missing as missing_charts
    from airbundle.format.imagescan import count_line, missing
    from airbundle.ops.inspect import inspect_bundle
    from airbundle.ops.scan import carried, scan_folder_all

    if not path.is_dir():
        raise UsageError(f"{path} is not a folder")
    result = scan_folder_all(path)
    files, found = result.files, result.images
    findings = [f for f in found if f.scanned]
    unscanned = [f for f in found if not f.scanned]
    shown = findings
    charts = result.charts
    if bundle is not None:
        manifest = inspect_bundle(bundle).manifest
        shown = missing(findings, carried(manifest.images, manifest.members))
        charts = missing_charts(result.charts, manifest.charts)
    if json_output:
        _echo(
            json.dumps(
                {
                    "files": files,
                    "references": len(findings),
                    "notScanned": [{"file": f.path, "reason": f.problem} for f in unscanned],
                    "shown": [
                        {
                            "ref": f.text,
                            "normalized": str(f.ref) if f.ref else None,
                            "file": f.path,
                            "line": f.line,
                            "kind": f.kind,
                            "problem": f.problem,
                        }
                        for f in shown
                    ],
                    "chartReferences": len(result.charts),
                    "charts": [
                        {
                            "chart": c.chart,
                            "version": c.version,
                            "repo": c.repo,
                            "file": c.path,
                            "line": c.line,
                            "kind": c.kind,
                        }
                        for c in charts
                    ],
                },
                indent=1,
            )
        )
    else:
        for f in shown:
            note = f"  ({escape(f.problem)})" if f.problem else ""
            _echo(f"{escape(f.path)}:{f.line}: {escape(f.text)}  [{escape(f.kind)}]{note}")
        for c in charts:
            _echo(f"{escape(c.path)}:{c.line}: {escape(c.text)}  [{escape(c.kind)}]")
        for f in unscanned:
            _echo(f"{escape(f.path)}: not scanned ({escape(str(f.problem))})")
        lacking = len(shown) if bundle is not None else None
        _say(quiet, count_line(len(findings), files, lacking, len(unscanned)), err=True)
        if result.charts:
            what = "not in the bundle" if bundle is not None else "found"
            _say(quiet, f"{len(charts)} chart reference(s) {what}", err=True)
    if bundle is not None and (shown or charts):
        raise typer.Exit(1)


@app.command("mirror-config")
@_errors_to_exit
def mirror_config(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE", help="A bundle (as for inspect), or the JSON report of an import."
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Folder to write into.")
    ],
    registry: Annotated[
        str | None,
        typer.Option(
            metavar="HOST[:PORT][/PREFIX]",
            help="The mirror (needed for a bundle, not for a report).",
        ),
    ] = None,
    max_nested_paths: NestedOpt = None,
    keep_source_host: Annotated[
        bool,
        typer.Option(
            "--keep-source-host", help="The import kept the source host as first path component."
        ),
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="The mirror speaks plain HTTP.")
    ] = False,
    skip_tls_verify: Annotated[
        bool,
        typer.Option(
            "--skip-tls-verify",
            help="The mirror speaks HTTPS with a certificate clients cannot verify.",
        ),
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            metavar="FILE",
            help="The CA (PEM) that signed the mirror's certificate, for clients.",
        ),
    ] = None,
    scope: Annotated[
        str,
        typer.Option(
            metavar="repository|registry", help="Entries per repository or per upstream registry."
        ),
    ] = "repository",
    quiet: QuietOpt = False,
) -> None:
    """Write the mirror configuration for clients.

    registries.conf, OpenShift IDMS/ITMS/ICSP (and the cluster's trust of
    the mirror), containerd hosts.toml, certs.d and kustomize images for what a bundle
    carries (or an import put somewhere)."""
    from airbundle.format.mapping import MappingOptions, RegistryLocation
    from airbundle.ops.mirrors import (
        carried_from_bundle,
        carried_from_report,
        charts_from_bundle,
        charts_from_report,
        choose_trust,
        write_mirror_config,
    )

    if source.suffix == ".json":
        name, images = carried_from_report(source)
        charts = charts_from_report(source)
    else:
        if registry is None:
            raise UsageError("--registry HOST[:PORT][/PREFIX] is needed to map a bundle")
        name, images = carried_from_bundle(
            source,
            RegistryLocation.parse(registry),
            MappingOptions(keep_source_host, max_nested_paths),
        )
        charts = charts_from_bundle(source)
    trust = choose_trust(
        source, insecure=insecure, skip_tls_verify=skip_tls_verify, ca_file=ca_file
    )
    for path in write_mirror_config(output, name, images, trust=trust, scope=scope, charts=charts):
        _say(quiet, f"wrote {path}")


@app.command()
@_errors_to_exit
def serve(
    registry: Annotated[
        str | None,
        typer.Option(metavar="oci:DIR", help="Serve the images import wrote into this OCI layout."),
    ] = None,
    git_dir: Annotated[
        Path | None,
        typer.Option("--git", metavar="DIR", help="Serve the bare repos import wrote here."),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            metavar="BUNDLE",
            help="Serve a bundle in place, without extracting it: a bundle file, a volume "
            "set's .volumes file or its folder (read-only media welcome).",
        ),
    ] = None,
    trust: Annotated[
        list[Path],
        typer.Option(
            metavar="KEY",
            help="For --bundle: trusted public key file or allowed_signers file (repeatable).",
        ),
    ] = [],  # noqa: B006 - typer needs a literal default
    threshold: ThresholdOpt = 1,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="For --bundle: a small writable folder for frame indexes of old bundles and "
            "git repos (default: ~/.cache/airbundle/serve).",
        ),
    ] = None,
    allow_expired: Annotated[
        bool,
        typer.Option(
            "--allow-expired", help="For --bundle: serve it even if it has expired (logged)."
        ),
    ] = False,
    listen: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Address to listen on.")
    ] = "127.0.0.1:5000",
    tls_cert: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Serve HTTPS with this certificate.")
    ] = (None),
    tls_key: Annotated[
        Path | None, typer.Option(metavar="FILE", help="The certificate's private key.")
    ] = None,
    htpasswd: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Require Basic auth for registry and git (bcrypt lines, htpasswd -B).",
        ),
    ] = None,
    keep_source_host: Annotated[
        bool,
        typer.Option(
            "--keep-source-host", help="Keep the source registry host as the first path component."
        ),
    ] = False,
    charts: Annotated[
        Path | None,
        typer.Option(
            "--charts",
            metavar="DIR",
            help="Serve the Helm repository import --charts wrote, at /charts/.",
        ),
    ] = None,
    files: Annotated[
        Path | None,
        typer.Option(
            "--files", metavar="DIR", help="Serve the files import --files wrote, at /files/."
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Serve images, repos, charts and files read-only.

    What import wrote (an OCI layout, bare repos, a chart repository,
    files) or a bundle in place: the OCI registry API (pull), git smart HTTP under
    /git/NAME.git, the charts at /charts/ (helm repo add), the files at /files/, and a
    page at /."""

    from airbundle.ops.serve import ServeOptions, prepare, run

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EscapingFormatter("airbundle serve: %(message)s"))
    logging.basicConfig(
        level=logging.ERROR if quiet or _state["quiet"] else logging.INFO,
        handlers=[handler],
    )
    if bundle is None and (trust or threshold != 1 or cache_dir or allow_expired):
        raise UsageError("--trust, --threshold, --cache-dir and --allow-expired go with --bundle")
    policy = None
    if bundle is not None:
        from airbundle.ops import keys as keyops
        from airbundle.ops.verify import load_policy

        policy = load_policy(keyops.load_trust(trust), threshold)
    options = ServeOptions(
        registry=registry,
        git=git_dir,
        listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        htpasswd=htpasswd,
        keep_source_host=keep_source_host,
        bundle=bundle,
        policy=policy,
        cache_dir=cache_dir,
        allow_expired=allow_expired,
        charts=charts,
        files=files,
    )

    def ready(url: str) -> None:
        if not (quiet or _state["quiet"]):
            _echo(f"serving on {url}", err=True)

    # A bar appears only if an old bundle is indexed (one pass over all of it).
    with ExitStack() as stack:
        bar: list[Callable[[int], None] | None] = []

        def progress(n: int) -> None:
            if not bar:
                bar.append(stack.enter_context(_progress(None, "indexing the bundle", quiet)))
            if bar[0] is not None:
                bar[0](n)

        prepared = prepare(options, progress=progress)
    run(prepared, on_ready=ready)


@cache_app.command("prune")
@_errors_to_exit
def cache_prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Keep blobs used more recently than this, e.g. 30d (default: remove all).",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="The cache (default: ~/.cache/airbundle).")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Remove cached registry blobs.

    git mirrors are kept: they make re-exports cheap."""
    from airbundle.adapters.blobcache import BlobCache
    from airbundle.adapters.cache import default_cache_dir

    cache = BlobCache(cache_dir or default_cache_dir())
    seconds = parse_duration(older_than).total_seconds() if older_than else None
    result = cache.prune(older_than=seconds)
    _say(
        quiet,
        f"removed {result.removed} blob(s), {human_size(result.freed)}; kept {result.kept}",
    )


@key_app.command("generate")
@_errors_to_exit
def key_generate(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="Private key file to write (PATH.pub beside it).")
    ],
    passphrase_file: PassOpt = None,
    comment: Annotated[
        str, typer.Option(metavar="TEXT", help="Comment stored in the public key.")
    ] = "airbundle",
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing key files.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate an Ed25519 signing key in OpenSSH format."""
    from airbundle.ops import keys as keyops

    public = keyops.generate_key(
        path, passphrase=keyops.read_passphrase(passphrase_file), comment=comment, force=force
    )
    _say(quiet, f"wrote {path} and {path}.pub ({public.fingerprint})")


_GLOBAL_FLAGS = frozenset({"-v", "--verbose"})


def _hoist_global_flags(argv: list[str]) -> list[str]:
    """`-v` may follow the command name (`airbundle import … -v`): move it in
    front, where the top-level callback reads it. Tokens after `--` stay."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in _GLOBAL_FLAGS]
    rest = [a for a in argv[:end] if a not in _GLOBAL_FLAGS]
    return flags + rest + argv[end:]


# Flags of the top level that may come before the command's name.
_TOP_FLAGS = frozenset({"-v", "--verbose", "-q", "--quiet"})


def _app_for(args: list[str]) -> typer.Typer:
    """The app with only the command (or group) that args name: typer builds a
    click command for every registered one on each run, a third of verify's
    start-up. The top level (no command, --help, --version, an unknown name)
    gets the whole app, whose help and errors list every command."""
    name = next((a for a in args if a not in _TOP_FLAGS), None)
    if name is None or name.startswith("-"):
        return app
    one = copy.copy(app)
    one.registered_commands = [
        c
        for c in app.registered_commands
        if c.callback is not None
        and (c.name or typer.main.get_command_name(c.callback.__name__)) == name
    ]
    one.registered_groups = [g for g in app.registered_groups if g.name == name]
    return one if one.registered_commands or one.registered_groups else app


def main(argv: list[str] | None = None) -> Any:
    args = _hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    try:
        return _app_for(args)(args=args, prog_name="airbundle")
    except SystemExit as exc:
        # click reports usage errors with exit 2 already; keep its code.
        if exc.code not in (None, 0) and not isinstance(exc.code, int):
            raise SystemExit(EXIT_USAGE) from None
        raise
