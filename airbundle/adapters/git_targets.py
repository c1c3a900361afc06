"""Where imported repositories land: bare repositories in a folder, or a git
server named by a URL template such as git://host/{name}.git.

Both follow the same three steps so that nothing moves until every check of
the whole import has passed: stage (objects in, verified), check (refuse
non-fast-forward), publish (move refs atomically).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from airbundle.adapters import git, git_head, git_push
from airbundle.adapters.registry.transport import TLSConfig
from airbundle.errors import TargetError, UsageError
from airbundle.format.paths import check_ref_name, check_repo_name
from airbundle.limits import DEFAULT_LIMITS, Limits

Refs = Sequence[tuple[str, str]]


class GitTarget(Protocol):
    def describe(self, name: str) -> str: ...

    def state_key(self) -> str:
        """The name the import state is kept under (`git=...`)."""
        ...

    def list_refs(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Each repository's refs (name -> oid) for an inventory; with no
        names, every repository the target can list."""
        ...

    def stage(self, name: str, bundle: Path, refs: Refs) -> None: ...

    def refused(self, name: str, refs: Refs) -> list[str]: ...

    def missing(self, name: str, commits: Sequence[str]) -> list[str]:
        """Which of `commits` (an incremental bundle's prerequisites) the target lacks."""
        ...

    def publish(self, name: str, refs: Refs, *, head: str | None, force: bool) -> None: ...

    def set_head(self, name: str, head: str) -> str | None:
        """Point the repository's HEAD at `head` (the source's HEAD branch)
        where the target allows it; a note for the operator where it does not."""
        ...

    def discard(self, name: str) -> None: ...

    def close(self) -> None: ...


class BareRepoTarget:
    """DIR/<name>.git, created bare if absent."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._created: set[str] = set()

    def path(self, name: str) -> Path:
        # Validated again here: a name from the media becomes a path.
        return self.root / f"{check_repo_name(name, error=TargetError)}.git"

    def describe(self, name: str) -> str:
        return str(self.path(name))

    def state_key(self) -> str:
        return f"git={self.root}"

    def list_refs(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        found = names or sorted(p.name[:-4] for p in self.root.glob("*.git"))
        return {
            name: dict(git.list_refs(self.path(name), error=TargetError, what=f"repo {name!r}"))
            for name in found
            if self.path(name).exists()
        }

    def stage(self, name: str, bundle: Path, refs: Refs) -> None:
        if not self.path(name).exists():
            self._created.add(name)
        git.stage_bundle(bundle, self.path(name), refs, what=f"repo {name!r}")

    def refused(self, name: str, refs: Refs) -> list[str]:
        return git.refused_updates(self.path(name), refs, what=f"repo {name!r}")

    def missing(self, name: str, commits: Sequence[str]) -> list[str]:
        if not commits:
            return []
        if not self.path(name).exists():
            return list(commits)
        known = set(git.known_objects(self.path(name), commits))
        return [c for c in commits if c not in known]

    def publish(self, name: str, refs: Refs, *, head: str | None, force: bool) -> None:
        git.update_refs(self.path(name), refs, head=head, what=f"repo {name!r}")

    def set_head(self, name: str, head: str) -> str | None:
        # publish set it when the bundle carried the branch; this covers a
        # repository made elsewhere whose HEAD names another one.
        return git_head.set_head(str(self.path(name)), head, env=None, what=f"repo {name!r}")

    def discard(self, name: str) -> None:
        if name in self._created:
            # A repository this import created and never published: leave no trace.
            shutil.rmtree(self.path(name), ignore_errors=True)
            self._created.discard(name)
            return
        git.discard_staged(self.path(name), what=f"repo {name!r}")

    def close(self) -> None:
        pass


class RemoteTarget:
    """A git server. A full bundle for refs the server does not have yet goes
    to receive-pack as it is (git://, smart HTTP: the server indexes the pack,
    once). Otherwise, and for transports we do not speak, its objects are
    staged in a scratch repository (checked there, and fast-forwards judged
    against the history), then sent with `git push --atomic`. Either way one
    transaction per repository."""

    def __init__(
        self,
        template: str,
        *,
        scratch: Path | None = None,
        tls: TLSConfig | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if "{name}" not in template:
            raise UsageError(f"--git {template!r}: a URL template must contain {{name}}")
        self.template = template
        self.tls = tls
        self.limits = limits
        self._env = _tls_env(tls)
        self._scratch_parent = scratch
        self._scratch: Path | None = None  # made when first needed
        self._direct: dict[str, tuple[Path, int]] = {}  # name -> (bundle, pack offset)
        # name -> (the push held before its last bytes or None if nothing to
        # push, the bundle): git:// pushes started while the objects are checked.
        self._pending: dict[str, tuple[git_push.PendingPush | None, Path, int]] = {}

    def url(self, name: str) -> str:
        return self.template.replace("{name}", check_repo_name(name, error=TargetError))

    def describe(self, name: str) -> str:
        return git.redact(self.url(name))

    def state_key(self) -> str:
        return f"git={git.redact(self.template)}"

    def list_refs(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        if not names:
            raise UsageError("a git URL template needs the repo names: --repo NAME")
        return {name: self._remote_refs(name) for name in names}

    def _work(self, name: str) -> Path:
        if self._scratch is None:
            self._scratch = Path(
                tempfile.mkdtemp(prefix="airbundle-git-", dir=self._scratch_parent)
            )
        return self._scratch / f"{name}.git"

    def stage(self, name: str, bundle: Path, refs: Refs) -> None:
        heads = git.read_bundle_heads(bundle, limits=self.limits)
        if (
            not heads.prerequisites
            and heads.object_format == "sha1"
            and sorted(heads.refs) == sorted(refs)
            and git_push.speaks(self.url(name))
        ):
            # The server indexes the pack; it is checked here too (the
            # server may not set receive.fsckObjects), with no base needed.
            empty = self._work(".fsck-bases")  # no repo name starts with "."
            git.ensure_bare_repo(empty, what=f"repo {name!r}")

            def check() -> None:
                git.check_objects(bundle, empty, what=f"repo {name!r}")

            try:
                # git://: sent while checked, the last bytes held until publish.
                if (
                    bundle.stat().st_size - heads.pack_offset
                    < self.limits.git_push_overlap_min_bytes
                ):
                    raise git_push.Unsupported("a small pack")
                pending = git_push.start_push(
                    self.url(name),
                    refs,
                    bundle,
                    heads.pack_offset,
                    check=check,
                    what=f"repo {name!r}: push to {self.describe(name)}",
                    limits=self.limits,
                )
            except git_push.Unsupported:
                check()
                self._direct[name] = (bundle, heads.pack_offset)
                return
            self._pending[name] = (pending, bundle, heads.pack_offset)
            return
        self._stage_here(name, bundle, refs)

    def _stage_here(self, name: str, bundle: Path, refs: Refs) -> None:
        git.stage_bundle(bundle, self._work(name), refs, what=f"repo {name!r}")

    def missing(self, name: str, commits: Sequence[str]) -> list[str]:
        """Fetch what the server has into the scratch repository (so the
        bundle's prerequisites are there to build on) and see what is absent."""
        if not commits:
            return []
        work = self._work(name)
        git.ensure_bare_repo(work, what=f"repo {name!r}")
        git.run_git(
            [
                "-C",
                str(work),
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--",
                self.url(name),
                "+refs/*:refs/airbundle-remote/*",
            ],
            error=TargetError,
            what=f"repo {name!r}: fetch from {self.describe(name)}",
            env=self._env,
        )
        known = set(git.known_objects(work, commits))
        return [c for c in commits if c not in known]

    def _remote_refs(self, name: str) -> dict[str, str]:
        proc = git.run_git(
            ["ls-remote", "--", self.url(name)],
            error=TargetError,
            what=f"repo {name!r} ({self.url(name)})",
            env=self._env,
        )
        out = {}
        for line in proc.stdout.decode().splitlines():
            oid, _, ref = line.partition("\t")
            if ref.startswith("refs/") and not ref.endswith("^{}"):  # not a peeled tag
                out[ref] = oid
        return out

    def refused(self, name: str, refs: Refs) -> list[str]:
        current = self._remote_refs(name)
        if name in self._pending and any(current.get(r) not in (None, oid) for r, oid in refs):
            # A ref appeared since the push started: judge it as a move, from
            # a staged history (the held push is dropped, nothing landed).
            pending, bundle, _offset = self._pending.pop(name)
            if pending is not None:
                pending.abort()
            self._stage_here(name, bundle, refs)
        if name in self._direct and any(current.get(r) not in (None, oid) for r, oid in refs):
            # Moving a ref, not creating it: whether that is a fast-forward
            # needs the history here.
            self._stage_here(name, self._direct.pop(name)[0], refs)
        problems = []
        for ref, oid in refs:
            old = current.get(ref)
            if old is None or old == oid:
                continue
            if ref.startswith("refs/tags/") or not git.is_ancestor(self._work(name), old, oid):
                problems.append(
                    f"repo {name!r}: {ref} on {self.url(name)} is at {old[:12]}; "
                    f"moving it to {oid[:12]} is not a fast-forward"
                )
        return problems

    def publish(self, name: str, refs: Refs, *, head: str | None, force: bool) -> None:
        direct = self._direct.pop(name, None)
        if name in self._pending:
            pending, bundle, offset = self._pending.pop(name)
            try:
                if pending is not None:
                    pending.finish()
                return
            except git_push.Unsupported:
                direct = (bundle, offset)  # the held connection is gone: push again
        if direct is not None:
            what = f"repo {name!r}: push to {self.describe(name)}"
            try:
                git_push.push_pack(
                    self.url(name),
                    refs,
                    *direct,
                    force=force,
                    what=what,
                    tls=self.tls,
                    limits=self.limits,
                )
                return
            except git_push.Unsupported:
                self._stage_here(name, direct[0], refs)
        plus = "+" if force else ""
        specs = [
            f"{plus}{git.INCOMING}{check_ref_name(r, error=TargetError)[5:]}:{r}" for r, _ in refs
        ]
        git.push_atomic(
            self._work(name),
            self.url(name),
            specs,
            what=f"repo {name!r}: push to {self.url(name)}",
            env=self._env,
        )

    def set_head(self, name: str, head: str) -> str | None:
        return git_head.set_head(
            self.url(name), head, env=self._env, what=f"repo {name!r} on {self.describe(name)}"
        )

    def discard(self, name: str) -> None:
        held = self._pending.pop(name, None)
        if held is not None and held[0] is not None:
            held[0].abort()  # nothing of it lands

    def close(self) -> None:
        for name in list(self._pending):
            self.discard(name)
        if self._scratch is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._scratch)


def _tls_env(tls: TLSConfig | None) -> dict[str, str]:
    """git's own HTTPS settings for the TLS options given (--ca-file, --cert,
    --cert-key), so that git and the direct push trust the same server."""
    if tls is None:
        return {}
    env = {}
    if tls.ca_file is not None:
        env["GIT_SSL_CAINFO"] = str(tls.ca_file)
    if tls.client_cert is not None:
        env["GIT_SSL_CERT"] = str(tls.client_cert)
        env["GIT_SSL_KEY"] = str(tls.client_key or tls.client_cert)
    return env
