"""Git, driven as a subprocess: fetch selected refs, write and read bundles.

Every ref and URL is passed as an argument list (never through a shell), refs
only after validation, and refs for `bundle create` on stdin so no value can
be taken for an option.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from airbundle.errors import AirbundleError, RefUpdateError, SourceError, TargetError
from airbundle.format.paths import check_object_id, check_ref_name
from airbundle.limits import DEFAULT_LIMITS, Limits

_BASE_ENV = {
    "GIT_TERMINAL_PROMPT": "0",  # never hang on a password prompt at 2 a.m.
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",  # we parse git's messages
}


@dataclass(frozen=True)
class BundleHeads:
    object_format: str
    refs: tuple[tuple[str, str], ...]  # (ref name, object id)
    prerequisites: tuple[str, ...]
    pack_offset: int = 0  # where the pack starts in the bundle file (0: not known)


def git_binary() -> str:
    path = shutil.which("git")
    if path is None:
        raise AirbundleError("git not found on PATH", hint="apt-get install git")
    return path


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """Hide user:password in any URL of a message."""
    return _USERINFO.sub(r"\1***@", text)


def _subcommand(args: Sequence[str]) -> str:
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-C", "-c"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


def run_git(
    args: Sequence[str],
    *,
    error: type[AirbundleError],
    what: str,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """git with these arguments; a failure raises `error` naming `what` (with
    `check` off, the caller reads the exit status itself)."""
    full_env = {**os.environ, **_BASE_ENV, **(env or {})}
    proc = subprocess.run(
        [git_binary(), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=full_env,
        check=False,
    )
    if check and proc.returncode != 0:
        raise error(redact(f"{what}: git {_subcommand(args)} failed: {_stderr(proc)}"))
    return proc


def _stderr(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode("utf-8", "replace").strip() or f"exit {proc.returncode}"


def parse_bundle_header(data: bytes, *, source: str) -> BundleHeads:
    """Read a git bundle's header (v2 or v3) up to the blank line before the pack."""
    lines = data.split(b"\n")
    if not lines or lines[0] not in (b"# v2 git bundle", b"# v3 git bundle"):
        raise SourceError(f"{source}: not a git bundle")
    object_format = "sha1"
    refs: list[tuple[str, str]] = []
    prereqs: list[str] = []
    for raw in lines[1:]:
        if raw == b"":
            break
        line = raw.decode("utf-8", "replace")
        if line.startswith("@"):
            key, _, value = line[1:].partition("=")
            if key == "object-format":
                object_format = value
            continue
        if line.startswith("-"):
            prereqs.append(check_object_id(line[1:].split(" ", 1)[0], error=SourceError))
            continue
        oid, _, ref = line.partition(" ")
        refs.append((ref, check_object_id(oid, error=SourceError)))
    return BundleHeads(object_format, tuple(refs), tuple(prereqs))


def read_bundle_heads(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> BundleHeads:
    with path.open("rb") as fh:
        head = fh.read(limits.max_git_bundle_header_bytes)
    end = head.find(b"\n\n")
    if end < 0:
        raise SourceError(
            f"{path}: git bundle header is missing or longer than "
            f"{limits.max_git_bundle_header_bytes} bytes"
        )
    heads = parse_bundle_header(head[: end + 1], source=str(path))
    return dataclasses.replace(heads, pack_offset=end + 2)


def _refspecs(patterns: Sequence[str], *, force: bool) -> list[str]:
    plus = "+" if force else ""
    return [f"{plus}{p}:{p}" for p in patterns]


def fetch_selected_refs(
    url: str, patterns: Sequence[str], repo: Path, *, what: str
) -> tuple[list[tuple[str, str]], str | None]:
    """Mirror-fetch only the selected refs of `url` into bare `repo`.

    Returns the fetched refs (name, oid) and the remote's HEAD symref if it
    points to a fetched branch.
    """
    created = not repo.exists()
    if created:
        run_git(["init", "--bare", "--quiet", str(repo)], error=SourceError, what=what)
    try:
        if _fetch_pack_speaks(url):
            head = _fetch_pack(url, patterns, repo, what=what)
        else:
            _fetch(url, patterns, repo, what=what)
            head = _remote_head(url, what=what)
    except SourceError:
        # A mirror that never received anything would look like a cache entry
        # (and make the next plan measure an empty history): leave none behind.
        if created:
            shutil.rmtree(repo, ignore_errors=True)
        raise
    # The repository may be a cache shared with earlier exports whose specs
    # selected other refs: keep only what this spec asks for.
    refs = [
        (n, oid)
        for n, oid in list_refs(repo, error=SourceError, what=what)
        if _selected(n, patterns)
    ]
    if head is not None and not any(name == head for name, _ in refs):
        head = None
    return refs, head


def _selected(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


_SYMREF_HEAD = re.compile(rb"ref: (refs/heads/\S+)\tHEAD")


def _remote_head(url: str, *, what: str) -> str | None:
    proc = run_git(["ls-remote", "--symref", "--", url, "HEAD"], error=SourceError, what=what)
    match = _SYMREF_HEAD.match(proc.stdout)
    return match.group(1).decode() if match else None


def _fetch(url: str, patterns: Sequence[str], repo: Path, *, what: str) -> None:
    run_git(
        [
            "-C",
            str(repo),
            # Keep even a small fetch as one pack, never loose objects.
            "-c",
            "fetch.unpackLimit=1",
            # Malformed objects from upstream are refused here, before anything
            # is signed (an import that pushes the pack as is relies on it).
            "-c",
            "fetch.fsckObjects=true",
            "fetch",
            "--quiet",
            "--no-tags",
            "--prune",
            "--no-write-fetch-head",
            "--",
            url,
            *_refspecs(patterns, force=True),
        ],
        error=SourceError,
        what=f"{what} (fetching {redact(url)})",
    )


def _fetch_pack_speaks(url: str) -> bool:
    """Whether `git fetch-pack` reaches `url` itself: git://, ssh, file and
    local paths (not HTTP(S) or other remote helpers, which only `git fetch`
    drives)."""
    scheme, sep, _ = url.partition("://")
    if sep:
        return scheme.lower() in ("git", "ssh", "git+ssh", "ssh+git", "file")
    return "::" not in url and not url.startswith("-")


def _fetch_pack(url: str, patterns: Sequence[str], repo: Path, *, what: str) -> str | None:
    """`git fetch` of the selected refs with one walk of the history fewer.

    git fetch indexes the pack (index-pack --strict, with fetch.fsckObjects),
    then walks every object the new refs reach to see that the pack connects
    (`rev-list --objects`): on a history of many small objects that walk costs
    as much as the export's own reachability check (pack_as_bundle), which
    is one too. fetch-pack lets index-pack tell whether the pack is
    self-contained and holds the refs' objects (as git clone does); only a
    pack that builds on objects already in `repo` is walked here, before a ref
    moves. The refs are then set (and those the patterns select that the
    server no longer has are deleted, as fetch --prune does) in one
    transaction. Returns the remote's HEAD branch, from the same listing.
    """
    shown = f"{what} (fetching {redact(url)})"
    listing = run_git(["ls-remote", "--symref", "--", url], error=SourceError, what=shown).stdout
    match = _SYMREF_HEAD.match(listing)
    head = match.group(1).decode() if match else None
    wanted = sorted(
        {
            ref
            for line in listing.decode("utf-8", "replace").splitlines()
            for ref in [line.partition("\t")[2]]
            if ref.startswith("refs/") and not ref.endswith("^{}") and _selected(ref, patterns)
        }
    )
    fetched: list[tuple[str, str]] = []
    if wanted:
        fetched = _run_fetch_pack(url, wanted, repo, what=what)
    local = list_refs(repo, error=SourceError, what=what)
    new = dict(fetched)
    lines = ["start"]
    lines += [f"update {name} {oid}" for name, oid in sorted(new.items())]
    gone = [name for name, _ in local if _selected(name, patterns) and name not in new]
    lines += [f"delete {name}" for name in gone]
    lines += ["prepare", "commit"]
    run_git(
        ["-C", str(repo), "update-ref", "--stdin"],
        error=SourceError,
        what=what,
        stdin=("\n".join(lines) + "\n").encode(),
    )
    return head


def _run_fetch_pack(
    url: str, wanted: Sequence[str], repo: Path, *, what: str
) -> list[tuple[str, str]]:
    shown = f"{what} (fetching {redact(url)})"
    proc = run_git(
        [
            "-C",
            str(repo),
            # index-pack --strict: malformed objects from upstream are refused
            # here, before anything is signed (as _fetch does).
            "-c",
            "fetch.fsckObjects=true",
            "fetch-pack",
            "--stdin",
            "--thin",
            "--keep",
            "--lock-pack",
            "--check-self-contained-and-connected",
            "--no-progress",
            url,
        ],
        error=SourceError,
        what=shown,
        stdin="".join(f"{check_ref_name(r, error=SourceError)}\n" for r in wanted).encode(),
    )
    connected = False
    fetched: list[tuple[str, str]] = []
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("lock "):
            lock = (repo / line[len("lock ") :]).resolve()
            if lock.parent == (repo / "objects" / "pack").resolve() and lock.suffix == ".keep":
                lock.unlink(missing_ok=True)
        elif line == "connectivity-ok":
            connected = True
        else:
            oid, _, name = line.partition(" ")
            if name in wanted:
                fetched.append((name, check_object_id(oid, error=SourceError)))
    if sorted(n for n, _ in fetched) != sorted(wanted):
        raise SourceError(f"{shown}: git fetch-pack did not report every ref it was asked for")
    if connected:
        # A self-contained pack: the refs' own objects must be in it.
        absent = {oid for _, oid in fetched} - set(known_objects(repo, [o for _, o in fetched]))
        if absent:
            raise SourceError(f"{shown}: the server did not send {', '.join(sorted(absent))}")
    else:
        # The pack builds on objects of earlier fetches (or fetched nothing):
        # see that every object the refs reach is here before any ref moves.
        run_git(
            ["-C", str(repo), "rev-list", "--objects", "--quiet", "--stdin", "--not", "--all"],
            error=SourceError,
            what=f"{shown}: the server did not send every object the refs need",
            stdin="".join(f"{oid}\n" for _, oid in fetched).encode(),
        )
    return fetched


@dataclass(frozen=True)
class PackBundle:
    """A git bundle made of a header and a pack file that follows it."""

    header: bytes
    pack: Path


def pack_as_bundle(
    repo: Path, refs: Sequence[tuple[str, str]], object_format: str
) -> PackBundle | None:
    """A bundle of `refs` without `git bundle create`: its header, and the pack
    to follow it, when the repository holds exactly their history in one pack:
    a first fetch, or a cache that fetched nothing new since, or one repacked
    (refs equal to `refs`, and as many objects in the pack as the refs reach).
    git index-pack checked that pack when it arrived, and a stored pack is
    self-contained; a bundle's pack is the same format. None when that cannot
    be shown: make the bundle the usual way.
    """
    objects = repo / "objects"
    packs = list((objects / "pack").glob("*.pack"))
    if (
        len(packs) != 1
        or any(len(p.name) == 2 for p in objects.iterdir())  # loose objects
        or (objects / "info" / "alternates").exists()
        or os.environ.get("GIT_ALTERNATE_OBJECT_DIRECTORIES")
        or (repo / "shallow").exists()
        or sorted(list_refs(repo, error=SourceError, what=str(repo))) != sorted(refs)
        or object_format != "sha1"
    ):
        return None
    # A server may send objects nobody asked for; git keeps them. Carry the
    # pack only if every object in it is one the refs reach.
    reachable = run_git(
        ["-C", str(repo), "rev-list", "--objects", "--count", *(oid for _, oid in refs)],
        error=SourceError,
        what=str(repo),
    )
    if int(reachable.stdout.strip() or b"-1") != _pack_object_count(packs[0].with_suffix(".idx")):
        return None
    header = "# v2 git bundle\n" + "".join(f"{oid} {name}\n" for name, oid in refs) + "\n"
    return PackBundle(header.encode(), packs[0])


def _pack_object_count(idx: Path) -> int:
    """The object count of a version 2 pack index (the last fan-out entry), or -1."""
    with idx.open("rb") as fh:
        head = fh.read(8 + 256 * 4)
    if len(head) != 8 + 256 * 4 or head[:8] != b"\xfftOc\x00\x00\x00\x02":
        return -1
    return int.from_bytes(head[-4:], "big")


def list_refs(repo: Path, *, error: type[AirbundleError], what: str) -> list[tuple[str, str]]:
    proc = run_git(
        ["-C", str(repo), "for-each-ref", "--format=%(refname) %(objectname)"],
        error=error,
        what=what,
    )
    out = []
    for line in proc.stdout.decode().splitlines():
        name, _, oid = line.partition(" ")
        out.append((name, oid))
    return out


def object_format(repo: Path, *, error: type[AirbundleError], what: str) -> str:
    proc = run_git(["-C", str(repo), "rev-parse", "--show-object-format"], error=error, what=what)
    return proc.stdout.decode().strip() or "sha1"


def create_bundle(
    repo: Path,
    refs: Sequence[tuple[str, str]],
    out: Path,
    *,
    what: str,
    reproducible: bool,
    exclude: Sequence[str] = (),
) -> None:
    """A bundle of `refs`; commits in `exclude` (and their history) are left
    out, so the bundle names them as prerequisites (an incremental bundle).

    If the refs hold nothing beyond `exclude` (the repository did not change
    since the base), git refuses to write an empty bundle: the bundle is then
    written here, the refs and, as prerequisites, the commits they point at,
    with an empty pack: about a hundred bytes, that git fetches into a
    repository holding those commits and refuses elsewhere."""
    names = [name for name, _ in refs]
    known = known_objects(repo, exclude)
    if known and not _has_new_objects(repo, names, known, what=what):
        write_refs_only_bundle(repo, refs, out, what=what)
        return
    _bundle_create(repo, names, known, out, what=what, reproducible=reproducible)


def write_refs_only_bundle(
    repo: Path, refs: Sequence[tuple[str, str]], out: Path, *, what: str
) -> None:
    """A git bundle that moves `refs` to objects the receiver already holds:
    v2 header, each ref's commit as a prerequisite, an empty pack (what git
    push sends for a ref moved to an existing commit)."""
    peeled = run_git(
        ["-C", str(repo), "rev-parse", *(f"{oid}^{{commit}}" for _, oid in refs)],
        error=SourceError,
        what=what,
    ).stdout.decode().split()
    header = "# v2 git bundle\n"
    header += "".join(f"-{oid}\n" for oid in sorted(set(peeled)))
    header += "".join(f"{oid} {check_ref_name(name, error=SourceError)}\n" for name, oid in refs)
    pack = b"PACK" + struct.pack(">II", 2, 0)
    out.write_bytes(header.encode() + b"\n" + pack + hashlib.sha1(pack).digest())  # noqa: S324


def _bundle_create(
    repo: Path,
    refs: Sequence[str],
    exclude: Sequence[str],
    out: Path,
    *,
    what: str,
    reproducible: bool,
) -> None:
    config = ["-c", "pack.threads=1"] if reproducible else []
    lines = [f"{check_ref_name(r, error=SourceError)}\n" for r in refs]
    lines += [f"^{check_object_id(oid, error=SourceError)}\n" for oid in exclude]
    run_git(
        [*config, "-C", str(repo), "bundle", "create", "--quiet", str(out), "--stdin"],
        error=SourceError,
        what=what,
        stdin="".join(lines).encode(),
    )


def _has_new_objects(repo: Path, refs: Sequence[str], exclude: Sequence[str], *, what: str) -> bool:
    """Whether the refs reach any object the `exclude` commits do not (an
    annotated tag's own object counts: git always writes such a ref)."""
    proc = run_git(
        ["-C", str(repo), "rev-list", "--objects", "--count", "--stdin"],
        error=SourceError,
        what=what,
        stdin="".join([*(f"{r}\n" for r in refs), *(f"^{oid}\n" for oid in exclude)]).encode(),
    )
    return int(proc.stdout.strip() or b"0") > 0


def history_size(repo: Path, tips: Sequence[str], exclude: Sequence[str], *, what: str) -> int:
    """Bytes the objects reachable from `tips`, less those reachable from the
    `exclude` commits the repository knows, take in its packs: close to the
    size of a bundle of them."""
    known = known_objects(repo, exclude)
    proc = run_git(
        ["-C", str(repo), "rev-list", "--objects", "--disk-usage", "--stdin"],
        error=SourceError,
        what=what,
        stdin="".join([*(f"{t}\n" for t in tips), *(f"^{k}\n" for k in known)]).encode(),
    )
    return int(proc.stdout.strip() or b"0")


def known_objects(repo: Path, oids: Sequence[str]) -> list[str]:
    """The subset of `oids` present in `repo` (one git process for all)."""
    if not oids:
        return []
    proc = subprocess.run(
        [git_binary(), "-C", str(repo), "cat-file", "--batch-check"],
        input="".join(f"{o}\n" for o in oids).encode(),
        capture_output=True,
        env={**os.environ, **_BASE_ENV},
        check=False,
    )
    return [
        line.split()[0]
        for line in proc.stdout.decode().splitlines()
        if line and not line.endswith("missing")
    ]


INCOMING = "refs/airbundle-incoming/"


def ensure_bare_repo(repo: Path, *, what: str) -> None:
    """Create `repo` as a bare repository if absent; never half-initialised."""
    if repo.exists():
        return
    repo.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}.", dir=repo.parent))
    run_git(["init", "--bare", "--quiet", str(tmp)], error=TargetError, what=what)
    tmp.replace(repo)


def check_objects(bundle: Path, bases: Path, *, what: str) -> None:
    """Refuse a bundle holding any object `git fsck --strict` would refuse (a
    tree with a `.git` entry, a commit without an email, ...), before a single
    one of its objects lands anywhere.

    `git fetch` from a bundle file does not apply fetch.fsckObjects (git 2.39
    unbundles without it), and a pack pushed to receive-pack as it is is
    checked only where the server sets receive.fsckObjects. So the pack is
    indexed here with `index-pack --strict` into a scratch file beside the
    bundle (nothing is written into `bases`, the repository whose objects a
    thin pack of an incremental bundle builds on), and the scratch file is
    removed whatever happens.
    """
    heads = read_bundle_heads(bundle)
    scratch = Path(tempfile.mkdtemp(prefix=".airbundle-fsck-", dir=bundle.parent)).resolve()
    try:
        with bundle.open("rb") as fh:
            fh.seek(heads.pack_offset)
            proc = subprocess.run(
                [
                    git_binary(),
                    "-C",
                    str(bases),
                    "index-pack",
                    "--strict",
                    "--fix-thin",
                    "--stdin",
                    str(scratch / "check.pack"),
                ],
                stdin=fh,
                capture_output=True,
                env={**os.environ, **_BASE_ENV},
                check=False,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip() or f"exit {proc.returncode}"
        raise TargetError(
            redact(f"{what}: the bundle holds objects git refuses (fsck): {message}"),
            hint="nothing was imported; the producer must fix the repository and export again",
        )


def stage_bundle(bundle: Path, repo: Path, refs: Sequence[tuple[str, str]], *, what: str) -> None:
    """Bring the bundle's objects into `repo` under a private namespace.

    Objects are checked (git bundle verify; every object with index-pack
    --strict before any lands, see :func:`check_objects`) and land in the
    repository, but no visible ref moves: that is :func:`update_refs`' job,
    after every check across the whole import has passed.
    """
    ensure_bare_repo(repo, what=what)
    run_git(
        ["-C", str(repo), "bundle", "verify", "--quiet", str(bundle)],
        error=TargetError,
        what=f"{what}: git bundle verify",
    )
    check_objects(bundle, repo, what=what)
    names = [check_ref_name(name, error=TargetError) for name, _ in refs]
    run_git(
        [
            "-C",
            str(repo),
            "-c",
            "fetch.fsckObjects=true",
            "-c",
            "transfer.fsckObjects=true",
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            str(bundle),
            *(f"+{n}:{INCOMING}{n[len('refs/') :]}" for n in names),
        ],
        error=TargetError,
        what=what,
    )
    staged = dict(list_refs(repo, error=TargetError, what=what))
    for name, oid in refs:
        if staged.get(INCOMING + name[len("refs/") :]) != oid:
            raise TargetError(
                f"{what}: bundle ref {name} does not point at {oid} as the manifest says"
            )


def refused_updates(repo: Path, refs: Sequence[tuple[str, str]], *, what: str) -> list[str]:
    """Refs that would move non-fast-forward (or a tag that would change)."""
    current = dict(list_refs(repo, error=TargetError, what=what))
    problems = []
    for name, oid in refs:
        old = current.get(name)
        if old is None or old == oid:
            continue
        if name.startswith("refs/tags/"):
            problems.append(f"{what}: tag {name} exists at {old[:12]}, bundle has {oid[:12]}")
            continue
        if not is_ancestor(repo, old, oid):
            problems.append(
                f"{what}: {name} would move non-fast-forward from {old[:12]} to {oid[:12]}"
            )
    return problems


def is_ancestor(repo: Path, old: str, new: str) -> bool:
    """True if `old` is in the history of `new` (False if `old` is unknown here)."""
    proc = subprocess.run(
        [git_binary(), "-C", str(repo), "merge-base", "--is-ancestor", old, new],
        capture_output=True,
        env={**os.environ, **_BASE_ENV},
        check=False,
    )
    return proc.returncode == 0


def update_refs(
    repo: Path, refs: Sequence[tuple[str, str]], *, head: str | None, what: str
) -> None:
    """Move every ref in one transaction, then drop the staging namespace."""
    current = dict(list_refs(repo, error=TargetError, what=what))
    zero = "0" * len(refs[0][1]) if refs else "0" * 40
    lines = ["start"]
    for name, oid in refs:
        lines.append(f"update {name} {oid} {current.get(name, zero)}")
    for name in current:
        if name.startswith(INCOMING):
            lines.append(f"delete {name}")
    lines += ["prepare", "commit"]
    run_git(
        ["-C", str(repo), "update-ref", "--stdin"],
        error=TargetError,
        what=what,
        stdin=("\n".join(lines) + "\n").encode(),
    )
    if head and any(name == head for name, _ in refs):
        run_git(["-C", str(repo), "symbolic-ref", "HEAD", head], error=TargetError, what=what)


def push_atomic(
    repo: Path, url: str, specs: Sequence[str], *, what: str, env: dict[str, str] | None = None
) -> None:
    """`git push --atomic` of `specs` from `repo` to `url`: all or nothing.

    RefUpdateError when git refused to move a ref (not a fast-forward, a tag
    that exists: `!` and `[rejected]` in its porcelain status), TargetError for
    any other failure."""
    proc = run_git(
        ["-C", str(repo), "push", "--atomic", "--porcelain", "--quiet", "--", url, *specs],
        error=TargetError,
        what=what,
        env=env,
        check=False,
    )
    if proc.returncode == 0:
        return
    message = redact(f"{what}: git push failed: {_stderr(proc)}")
    rejected = [
        f"{ref} {summary}"
        for flag, _, ref, summary in _porcelain(proc.stdout)
        if flag == "!" and summary.startswith("[rejected]")
    ]
    if rejected:
        raise RefUpdateError(
            f"{message} ({'; '.join(rejected)})", hint="re-run with --force to move it"
        )
    raise TargetError(message)


def _porcelain(stdout: bytes) -> list[tuple[str, str, str, str]]:
    """`git push --porcelain` status lines: flag, source, destination ref, summary."""
    out = []
    for line in stdout.decode("utf-8", "replace").splitlines():
        flag, tab, rest = line.partition("\t")
        refs, _, summary = rest.partition("\t")
        if tab and len(flag) == 1:
            source, _, destination = refs.partition(":")
            out.append((flag, source, destination, summary))
    return out


def discard_staged(repo: Path, *, what: str) -> None:
    """Drop the staging refs of an import that will not be published."""
    if not repo.exists():
        return
    staged = [n for n, _ in list_refs(repo, error=TargetError, what=what) if n.startswith(INCOMING)]
    if staged:
        lines = "".join(f"delete {name}\n" for name in staged)
        run_git(
            ["-C", str(repo), "update-ref", "--stdin"],
            error=TargetError,
            what=what,
            stdin=lines.encode(),
        )
