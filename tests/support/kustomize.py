"""kustomize's `images:` transformer, written from its documented rules and
nothing of ours, to judge the kustomize/images.yaml that mirror-config writes.

kubectl (and so `kubectl kustomize`) is not among Debian's packages, so the
suite cannot run the real thing; this is the rule set of kustomize v5
(api/internal/image: IsImageMatched, Split; api/filters/imagetag: the
updater), checked once by hand against `kubectl kustomize` v5.5.0 on the
spellings of test_landing_mirrors.SPELLINGS (docs/operations.md says so):

* an entry applies to an image value when the value is the entry's `name`
  written exactly, optionally followed by `:TAG` and/or `@sha256:DIGEST`
  (the name is used as a regular expression, unescaped, anchored at both ends);
* the value splits into name, tag and digest (a ':' in the first path
  component is a port, not a tag);
* `newName` replaces the name; `newTag` replaces tag and digest; `digest`
  replaces both too; with both, both are set; neither keeps them;
* entries apply one after another, each to what the one before left.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping


def matches(value: str, name: str) -> bool:
    pattern = "^" + name + r"(:[a-zA-Z0-9_.{}-]*)?(@sha256:[a-zA-Z0-9_.{}-]*)?$"
    return re.match(pattern, value) is not None


def split(value: str) -> tuple[str, str, str]:
    """(name, tag, digest) as kustomize splits an image value."""
    slash = value.find("/")
    offset = slash if slash > 0 else 0
    search = value[offset:]
    at = search.find("@")
    colon = search.find(":")
    if colon < 0 and at < 0:
        return value, "", ""
    if at >= 0 and (at < colon or colon < 0):
        return value[: at + offset], "", value[at + offset + 1 :]
    if at >= 0 and colon >= 0:
        return (
            value[: colon + offset],
            value[colon + offset + 1 : at + offset],
            value[at + offset + 1 :],
        )
    return value[: colon + offset], value[colon + offset + 1 :], ""


def apply_one(entry: Mapping[str, str], value: str) -> str:
    if not matches(value, entry["name"]):
        return value
    name, tag, digest = split(value)
    name = entry.get("newName") or name
    new_tag, new_digest = entry.get("newTag", ""), entry.get("digest", "")
    if new_tag and new_digest:
        tag, digest = new_tag, new_digest
    elif new_tag:
        tag, digest = new_tag, ""
    elif new_digest:
        tag, digest = "", new_digest
    out = name
    if tag:
        out += ":" + tag
    if digest:
        out += "@" + digest
    return out


def rewrite(entries: Iterable[Mapping[str, str]], value: str) -> str:
    for entry in entries:
        value = apply_one(entry, value)
    return value
