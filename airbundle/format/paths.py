"""Names that become paths, URLs or command arguments, validated in one place.

Every check here runs at export *and* again at import: nothing read from a
bundle is trusted to have been validated when it was written.
"""

from __future__ import annotations

import re

from airbundle.errors import AirbundleError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# 80 characters keep repos/<name>.bundle inside a plain ustar name field.
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
# Channel names (and bundle names): the manifest schema's `name`.
_CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Git refs we carry: refs/heads/* and refs/tags/* by default; the component
# rules follow git-check-ref-format(1), stricter where it is cheap to be.
_REF_COMPONENT = re.compile(
    r"[A-Za-z0-9_+=%@,~^{}()\[\]#!$&'*][A-Za-z0-9._+=%@,~^{}()\[\]#!$&'*-]*"
)
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def check_member_path(
    path: str, *, max_length: int = 1024, error: type[AirbundleError] = AirbundleError
) -> str:
    """Refuse any archive member path that is not plainly relative and clean."""
    problem = None
    if not path:
        problem = "is empty"
    elif len(path) > max_length:
        problem = f"is longer than {max_length} characters"
    elif _CONTROL.search(path):
        problem = "contains control characters"
    elif "\\" in path:
        problem = "contains a backslash"
    elif path.startswith("/"):
        problem = "is absolute"
    else:
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            problem = "has an empty, '.' or '..' component"
    if problem:
        raise error(f"unsafe member path {path!r}: it {problem}")
    return path


def check_channel(name: str, *, error: type[AirbundleError] = AirbundleError) -> str:
    """A release channel, as `export --channel` records it and `import --channel` names it."""
    if not _CHANNEL.fullmatch(name):
        raise error(
            f"invalid channel {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 100, starting with a letter or digit)"
        )
    return name


def check_repo_name(name: str, *, error: type[AirbundleError] = AirbundleError) -> str:
    """Repo names become file names and URL path parts: keep them boring."""
    if not _REPO_NAME.fullmatch(name) or ".." in name or name.endswith((".", ".git", ".lock")):
        raise error(
            f"invalid repo name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 80, starting with a letter or digit, no '..', no '/', "
            "not ending in '.git' or '.lock')"
        )
    return name


def check_ref_name(ref: str, *, error: type[AirbundleError] = AirbundleError) -> str:
    """A full ref name such as refs/heads/main, safe to pass to git as an argument."""
    problem = _ref_problem(ref)
    if problem:
        raise error(f"invalid git ref {ref!r}: it {problem}")
    return ref


def _ref_problem(ref: str) -> str | None:
    """What is wrong with `ref` as a full ref name, or None."""
    parts = ref.split("/")
    problem = None
    if not ref.startswith("refs/") or len(parts) < 3:
        problem = "must start with refs/ and have a name after the namespace"
    elif _CONTROL.search(ref) or " " in ref:
        problem = "contains control characters or spaces"
    elif ".." in ref or "@{" in ref or ref.endswith((".", "/", ".lock")) or "//" in ref:
        problem = "contains '..', '@{', '//' or ends with '.', '/' or '.lock'"
    elif any(p.startswith(("-", ".")) or p.endswith(".lock") for p in parts):
        problem = "has a component starting with '-' or '.'"
    elif any(c in ref for c in "~^:?*[\\"):
        problem = "contains one of ~ ^ : ? * [ \\"
    elif not all(_REF_COMPONENT.fullmatch(p) for p in parts):
        problem = "contains characters git does not allow"
    elif len(ref) > 1024:
        problem = "is longer than 1024 characters"
    return problem


def check_ref_pattern(pattern: str, *, error: type[AirbundleError] = AirbundleError) -> str:
    """A ref, or a ref pattern with one '*' in its last component (refs/tags/v*)."""
    if "*" in pattern:
        if pattern.count("*") != 1 or "*" in pattern.rsplit("/", 1)[0]:
            raise error(f"invalid ref pattern {pattern!r}: one '*', in the last component only")
        # Checked with a stand-in for '*'; reported for the pattern the user wrote.
        problem = _ref_problem(pattern.replace("*", "x"))
        if problem:
            raise error(f"invalid git ref pattern {pattern!r}: it {problem}")
        return pattern
    return check_ref_name(pattern, error=error)


def check_object_id(oid: str, *, error: type[AirbundleError] = AirbundleError) -> str:
    if not _OBJECT_ID.fullmatch(oid):
        raise error(f"invalid git object id {oid!r}: expected 40 or 64 lowercase hex digits")
    return oid
