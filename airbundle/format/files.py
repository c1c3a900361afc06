"""Plain files a bundle carries (CLI binaries, ISO images, CA bundles, scanner
databases): their names, the manifest's `files` entries, SHA256SUMS.

A file's name is where it lands under `import --files DIR`, so it is checked
like every member path, at export and again at import: relative, no empty,
`.` or `..` component, no backslash or control character, no component longer
than a file system allows, nothing that looks like airbundle's own temporary
files, and short enough for a plain ustar header as `files/NAME`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from airbundle.errors import AirbundleError, FormatError
from airbundle.format.digest import Digest
from airbundle.format.paths import check_member_path
from airbundle.format.tarstream import ustar_fits

FILES_DIR = "files"
FILE_PREFIX = f"{FILES_DIR}/"
# fsutil's temporary names; a carried file may not be mistaken for one.
_TEMP_MARK = ".airbundle-tmp-"
_MAX_COMPONENT_BYTES = 255


def file_member_path(name: str) -> str:
    return f"{FILE_PREFIX}{name}"


def check_file_name(name: str, *, error: type[AirbundleError] = FormatError) -> str:
    """A carried file's name, safe to become a path under the import's folder."""
    check_member_path(name, error=error)
    for part in name.split("/"):
        if len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES:
            raise error(f"file name {name!r}: component {part[:40]!r}... is too long")
        if part.startswith(_TEMP_MARK):
            raise error(f"file name {name!r}: {_TEMP_MARK}* names are airbundle's temporary files")
        if part != part.strip():
            raise error(f"file name {name!r}: a component may not start or end in white space")
    if not ustar_fits(file_member_path(name)):
        raise error(
            f"file name {name!r} is too long for the bundle (files/NAME must fit a ustar "
            "header: at most 100 bytes after the last '/' and 155 before it)"
        )
    return name


@dataclass(frozen=True)
class FileEntry:
    """One carried file: where it lands, its size and sha256, where it came
    from (as written in the spec, credentials removed), and whether it is
    executable (the mode import gives it)."""

    name: str
    size: int
    digest: Digest
    source: str
    executable: bool = False

    @property
    def member(self) -> str:
        return file_member_path(self.name)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "size": self.size,
            "digest": str(self.digest),
            "source": self.source,
            "executable": self.executable,
        }


def sha256sums(entries: Iterable[FileEntry]) -> bytes:
    """`sha256sum -c` input for the files, in name order."""
    lines = [f"{e.digest.hex}  {e.name}\n" for e in sorted(entries, key=lambda e: e.name)]
    return "".join(lines).encode("utf-8")


def folder_clash(names: Iterable[str]) -> str | None:
    """A name that is both a file and a folder of another name, if any."""
    names = set(names)
    for name in sorted(names):
        parts = name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in names:
                return "/".join(parts[:i])
    return None
