"""Every bad input: the exact error (class and the name of what is at fault), nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from airbundle.errors import (
    AirbundleError,
    ArchiveError,
    IntegrityError,
    ManifestError,
    MemberDigestError,
    SignatureError,
    SourceError,
    SpecError,
    TargetError,
    TruncatedError,
)
from airbundle.format.archive import MANIFEST_PATH, signature_path
from airbundle.format.manifest import BundleManifest, RefEntry
from airbundle.format.oci import REF_NAME
from airbundle.format.tarstream import DIRECTORY, encode_header
from airbundle.ops.export import export_bundle
from airbundle.ops.importer import ImportOptions, import_bundle
from airbundle.ops.inspect import inspect_bundle
from airbundle.ops.specfile import load_spec
from airbundle.ops.verify import verify_bundle
from support.crafting import (
    EPOCH,
    GIT_MEMBER,
    NOW,
    Parts,
    World,
    blob,
    content_start,
    export_options,
    flip,
    make_manifest,
    prefix_tar,
    raw_bundle,
    raw_header,
    read_parts,
    sign,
    signed_bundle,
    small_members,
    snapshot,
    tar_bytes,
    temp_files,
    world,
    write_bundle,
    write_parts,
)

SIG0 = signature_path(0)


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


@pytest.fixture(scope="session")
def parts(env: World) -> Parts:
    return read_parts(env.bundle)


def verify(env: World, path: Path) -> None:
    verify_bundle(path, env.policy(), at=NOW)


# --- spec files -------------------------------------------------------------------

GOOD_SPEC = """\
apiVersion: airbundle/v1
kind: BundleSpec
metadata:
  name: broken
images:
  - ref: oci:layouts/hello:1.0
    name: registry.example.com/team/hello:1.0
  - ref: oci:layouts/hello:0.9
    platforms: [linux/amd64]
repos:
  - name: gitops
    url: gitops
"""


def spec_file(tmp_path: Path, text: str) -> Path:
    """The spec text as it is (broken on purpose), in a file."""
    path = tmp_path / "bad-spec.yaml"
    path.write_text(text, "utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in spec")


def spec_error(tmp_path: Path, text: str) -> SpecError:
    path = spec_file(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.exit_code == 2
    return info.value


def test_good_spec_parses(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, GOOD_SPEC))
    assert [i.text for i in spec.images] == ["oci:layouts/hello:1.0", "oci:layouts/hello:0.9"]
    assert [r.name for r in spec.repos] == ["gitops"]


@pytest.mark.parametrize("body", ["", "images: []\n", "images: []\nrepos: []\n"])
def test_a_spec_that_carries_nothing_is_an_error(tmp_path: Path, body: str) -> None:
    error = spec_error(
        tmp_path, "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: e}\n" + body
    )
    assert error.message.endswith(
        "the spec carries nothing: add entries under images:, repos:, charts: or files:"
    )


def test_a_repo_url_under_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    spec = load_spec(
        spec_file(
            tmp_path,
            "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: h}\n"
            "repos:\n  - name: gitops\n    url: ~/src/gitops\n",
        )
    )
    assert spec.repos[0].url == str(tmp_path / "home" / "src" / "gitops")
    assert spec.repos[0].written_url == "~/src/gitops"


SPEC_CASES = [
    ("apiVersion: airbundle/v1\n", "", None, "(top level)", "'apiVersion' is a required"),
    ("kind: BundleSpec", "kind: Bundle", "kind:", "kind", "'BundleSpec' was expected"),
    ("kind: BundleSpec", "kind: [BundleSpec]", "kind:", "kind", "'BundleSpec' was expected"),
    ("name: broken", "name: -bad", "name: -bad", "metadata.name", "does not match"),
    (
        "ref: oci:layouts/hello:0.9",
        "ref: ''",
        "ref: ''",
        "images[1].ref",
        "'' should be non-empty",
    ),
    ("ref: oci:layouts/hello:0.9", "ref: 42", "ref: 42", "images[1].ref", "not of type"),
    (
        "platforms: [linux/amd64]",
        "platforms: [linux]",
        "platforms:",
        "images[1].platforms[0]",
        "'linux' does not match",
    ),
    (
        "platforms: [linux/amd64]",
        "platforms: linux/amd64",
        "platforms:",
        "images[1].platforms",
        "'linux/amd64' is not of type 'array'",
    ),
    (
        "platforms: [linux/amd64]",
        "platforms: []",
        "platforms:",
        "images[1].platforms",
        "should be non-empty",
    ),
    (
        "platforms: [linux/amd64]",
        "platforms: [linux/amd64, linux/amd64]",
        "platforms:",
        "images[1].platforms",
        "has non-unique elements",
    ),
    (
        "ref: oci:layouts/hello:0.9",
        "ref: 'oci:'",
        "ref: 'oci:'",
        "images[1].ref",
        "no path after 'oci:'",
    ),
    (
        "ref: oci:layouts/hello:0.9",
        "ref: 'Registry.Example/x::y'",
        "ref: 'Registry",
        "images[1].ref",
        "invalid image reference",
    ),
    ("name: gitops", "name: team/gitops", "team/gitops", "repos[0].name", "does not match"),
    (
        "name: gitops",
        "name: a..b",
        "a..b",
        "repos[0].name",
        "invalid repo name 'a..b'",
    ),
    (
        "name: gitops",
        "name: gitops.git",
        "gitops.git",
        "repos[0].name",
        "invalid repo name 'gitops.git'",
    ),
    ("url: gitops", "url: ''", "url: ''", "repos[0].url", "should be non-empty"),
    (
        "url: gitops",
        "url: gitops\n    refs: ['refs/heads/a..b']",
        "refs:",
        "repos[0].refs[0]",
        "invalid git ref 'refs/heads/a..b'",
    ),
    (
        "url: gitops",
        "url: gitops\n    refs: ['refs/*/x']",
        "refs:",
        "repos[0].refs[0]",
        "invalid ref pattern 'refs/*/x'",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "needle", "field", "message"),
    [pytest.param(*case, id=case[3]) for case in SPEC_CASES],
)
def test_spec_schema_errors_name_file_line_and_field(
    tmp_path: Path, old: str, new: str, needle: str | None, field: str, message: str
) -> None:
    assert old in GOOD_SPEC
    text = GOOD_SPEC.replace(old, new, 1)
    error = spec_error(tmp_path, text)
    line = 1 if needle is None else line_of(text, needle)
    assert error.message.startswith(f"{tmp_path / 'bad-spec.yaml'}:{line}: field {field}: ")
    assert message in error.message


def test_unknown_top_level_field_is_named(tmp_path: Path) -> None:
    error = spec_error(tmp_path, GOOD_SPEC.replace("repos:", "imagez: []\nrepos:"))
    assert str(tmp_path / "bad-spec.yaml") in error.message
    assert "unknown field 'imagez'" in error.message


@pytest.mark.parametrize(
    ("old", "new", "needle", "field"),
    [
        ("repos:", "imagez: []\nrepos:", "imagez", "imagez"),
        ("  name: broken", "  name: broken\n  nmae: typo", "nmae", "metadata.nmae"),
        (
            "    platforms: [linux/amd64]\n",
            "    platforms: [linux/amd64]\n    tag: x\n",
            "tag:",
            "images[1].tag",
        ),
    ],
    ids=["imagez", "metadata.nmae", "images[1].tag"],
)
def test_unknown_field_error_points_at_its_line(
    tmp_path: Path, old: str, new: str, needle: str, field: str
) -> None:
    text = GOOD_SPEC.replace(old, new, 1)
    error = spec_error(tmp_path, text)
    assert error.message.startswith(
        f"{tmp_path / 'bad-spec.yaml'}:{line_of(text, needle)}: field {field}: "
    )


def test_duplicate_repo_names(tmp_path: Path) -> None:
    text = GOOD_SPEC + "  - name: gitops\n    url: elsewhere\n"
    error = spec_error(tmp_path, text)
    assert error.message == (
        f"{tmp_path / 'bad-spec.yaml'}:13: field repos[1].name: repo name 'gitops' is used twice"
    )


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    text = GOOD_SPEC.replace("kind: BundleSpec\n", "kind: BundleSpec\nkind: BundleSpec\n")
    error = spec_error(tmp_path, text)
    assert error.message == f"{tmp_path / 'bad-spec.yaml'}:3: duplicate key 'kind'"


BILLION_LAUGHS = """\
apiVersion: airbundle/v1
kind: BundleSpec
metadata: {name: bomb}
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    start = time.monotonic()
    error = spec_error(tmp_path, BILLION_LAUGHS)
    assert time.monotonic() - start < 2
    assert error.message == (
        f"{tmp_path / 'bad-spec.yaml'}: the spec expands to more than 100000 values "
        "(an alias bomb?)"
    )


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object:os.system x", "tag:yaml.org,2002:python/object:os.system"),
        ("!!python/object/apply:os.system ['touch PWNED']", "python/object/apply:os.system"),
        ("!!python/name:os.system ''", "tag:yaml.org,2002:python/name:os.system"),
        ("!custom x", "!custom"),
        ("!!binary aGVsbG8=", "tag:yaml.org,2002:binary"),
    ],
)
def test_yaml_tags_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, tag: str
) -> None:
    monkeypatch.chdir(tmp_path)
    text = GOOD_SPEC.replace("name: broken", f"name: {value}")
    error = spec_error(tmp_path, text)
    assert error.message.startswith(f"{tmp_path / 'bad-spec.yaml'}:4: YAML tag '")
    assert tag in error.message
    assert "is not allowed" in error.message
    assert not (tmp_path / "PWNED").exists()


def test_non_yaml_and_non_utf8_specs(tmp_path: Path) -> None:
    error = spec_error(tmp_path, "apiVersion: [unclosed\n")
    assert error.message.startswith(f"{tmp_path / 'bad-spec.yaml'}: not valid YAML: ")
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError, match=rf"^{path}: not UTF-8 text$"):
        load_spec(path)
    with pytest.raises(SpecError, match=r"^cannot read spec .*missing\.yaml: No such file"):
        load_spec(tmp_path / "missing.yaml")
    error = spec_error(tmp_path, GOOD_SPEC + "---\nanother: doc\n")
    assert error.message == f"{tmp_path / 'bad-spec.yaml'}: expected exactly one YAML document"


@pytest.mark.parametrize("value", ["!!int abc", "!!float abc", "!!bool maybe"])
def test_bad_explicit_scalar_tag_is_a_spec_error(tmp_path: Path, value: str) -> None:
    error = spec_error(tmp_path, GOOD_SPEC.replace("name: broken", f"name: {value}"))
    assert error.message.startswith(f"{tmp_path / 'bad-spec.yaml'}:4: ")


@pytest.mark.parametrize(
    "tail",
    ["images: " + "[" * 3000 + "]" * 3000 + "\n", "repos: &loop [*loop]\n"],
    ids=["deep", "recursive-alias"],
)
def test_deep_or_recursive_yaml_is_a_spec_error(tmp_path: Path, tail: str) -> None:
    text = GOOD_SPEC.split("images:")[0] + tail
    error = spec_error(tmp_path, text)
    assert str(tmp_path / "bad-spec.yaml") in error.message


def test_non_string_key_names_its_line(tmp_path: Path) -> None:
    text = GOOD_SPEC + "1: one\n"
    error = spec_error(tmp_path, text)
    assert error.message == f"{tmp_path / 'bad-spec.yaml'}:13: mapping keys must be strings"


# --- sources that do not exist ------------------------------------------------------


def export_text_spec(env: World, tmp_path: Path, images: str, repos: str = "") -> Path:
    """A spec in tmp_path that names the samples by absolute path; returns the output."""
    text = f"apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {{name: s}}\n{images}{repos}"
    spec = tmp_path / "spec" / "spec.yaml"
    spec.parent.mkdir()
    spec.write_text(text.replace("ROOT", str(env.root)), "utf-8")
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)
    export_bundle(load_spec(spec), export_options(out, env.key))
    return out


GOOD_IMAGE = "images:\n  - ref: oci:ROOT/layouts/hello:0.9\n    name: r.example/h:0.9\n"


@pytest.mark.parametrize(
    ("images", "repos", "named", "problem"),
    [
        (
            "images:\n  - ref: oci:ROOT/missing/layout:1.0\n    name: r.example/x:1\n",
            "",
            "oci:ROOT/missing/layout:1.0",
            "is not an OCI image layout (no oci-layout file)",
        ),
        (
            "images:\n  - ref: oci:ROOT/layouts/hello:2.0\n    name: r.example/x:1\n",
            "",
            "oci:ROOT/layouts/hello:2.0",
            "no image with ref name '2.0'",
        ),
        (
            "images:\n  - ref: docker-archive:ROOT/saved/nope.tar\n",
            "",
            "docker-archive:ROOT/saved/nope.tar",
            "",
        ),
        (GOOD_IMAGE, "repos:\n  - name: gitops\n    url: ROOT/no-such-repo\n", "repo 'gitops'", ""),
        (
            GOOD_IMAGE,
            "repos:\n  - name: gitops\n    url: ROOT/gitops\n    refs: [refs/heads/nope]\n",
            "repo 'gitops'",
            "refs/heads/nope",
        ),
    ],
    ids=["oci-missing", "oci-ref-missing", "docker-archive-missing", "repo-missing", "no-refs"],
)
def test_missing_source_is_a_source_error_and_writes_nothing(
    env: World, tmp_path: Path, images: str, repos: str, named: str, problem: str
) -> None:
    with pytest.raises(SourceError) as info:
        export_text_spec(env, tmp_path, images, repos)
    assert info.value.exit_code == 3
    assert named.replace("ROOT", str(env.root)) in info.value.message
    assert problem in info.value.message
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []
    assert temp_files(tmp_path) == []


def test_source_blob_that_lies_leaves_no_output(env: World, tmp_path: Path) -> None:
    """A layer whose bytes do not match its digest stops the export mid-stream; the
    half-written bundle is removed and an older bundle at the output path survives."""
    layout = tmp_path / "layout"
    shutil.copytree(env.root / "layouts" / "hello", layout)
    index = json.loads((layout / "index.json").read_bytes())
    tagged = next(m for m in index["manifests"] if m["annotations"][REF_NAME] == "0.9")
    manifest = json.loads((layout / "blobs" / "sha256" / tagged["digest"][7:]).read_bytes())
    layer = manifest["layers"][0]["digest"]
    blob_file = layout / "blobs" / "sha256" / layer[7:]
    blob_file.write_bytes(flip(blob_file.read_bytes(), 100))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: s}\n"
        f"images:\n  - ref: oci:{layout}:0.9\n    name: r.example/h:0.9\n",
        "utf-8",
    )
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir()
    out.write_bytes(b"an older bundle")
    with pytest.raises(SourceError) as info:
        export_bundle(load_spec(spec), replace(export_options(out, env.key), force=True))
    assert info.value.message.startswith(f"oci:{layout}:0.9: blob {layer}: content has digest ")
    assert info.value.message.endswith(f", expected {layer}")
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.airbundle"]
    assert out.read_bytes() == b"an older bundle"
    assert temp_files(tmp_path) == []


def test_export_succeeds_with_good_sources(env: World, tmp_path: Path) -> None:
    out = export_text_spec(
        env, tmp_path, GOOD_IMAGE, "repos:\n  - name: gitops\n    url: ROOT/gitops\n"
    )
    verify(env, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.airbundle"]


# --- verify: the real bundle, tampered ------------------------------------------------


def test_pristine_bundle_and_its_rebuild_verify(env: World, parts: Parts, tmp_path: Path) -> None:
    verify(env, env.bundle)
    verify(env, write_parts(tmp_path / "rebuilt.airbundle", parts))


def first_blob(parts: Parts) -> str:
    return next(p for p, _ in parts.members if p.startswith("images/blobs/"))


@pytest.mark.parametrize("which", ["blob", "git", "index"])
def test_one_byte_changed_in_a_member_names_it(
    env: World, parts: Parts, tmp_path: Path, which: str
) -> None:
    path = {"blob": first_blob(parts), "git": GIT_MEMBER, "index": "images/index.json"}[which]
    data = parts.member(path)
    changed = write_parts(
        tmp_path / "t.airbundle", parts.replace_member(path, flip(data, len(data) // 2))
    )
    with pytest.raises(MemberDigestError) as info:
        verify(env, changed)
    assert info.value.message.startswith(
        f"{changed}: member '{path}' is corrupt or was tampered with: its content has digest "
    )
    assert str(dict((m.path, m.digest) for m in env.export.manifest.members)[path]) in (
        info.value.message
    )


def test_member_size_changed_names_it(env: World, parts: Parts, tmp_path: Path) -> None:
    data = parts.member(GIT_MEMBER)
    changed = write_parts(tmp_path / "t.airbundle", parts.replace_member(GIT_MEMBER, data + b"\0"))
    with pytest.raises(
        MemberDigestError,
        match=rf"member '{GIT_MEMBER}' has {len(data) + 1} "
        rf"bytes in the archive, the signed manifest says {len(data)}$",
    ):
        verify(env, changed)


def test_one_byte_changed_in_the_manifest(env: World, parts: Parts, tmp_path: Path) -> None:
    manifest = parts.manifest.replace(b'"name": "samples"', b'"name": "samplez"', 1)
    assert len(manifest) == len(parts.manifest) and manifest != parts.manifest
    changed = write_parts(tmp_path / "t.airbundle", replace(parts, manifest=manifest))
    with pytest.raises(SignatureError) as info:
        verify(env, changed)
    message = info.value.message
    assert message.startswith(f"{changed}: bundle has 0 trusted signature(s) of 1 required")
    assert f"invalid signatures: {SIG0}: signature by SHA256:" in message
    assert "does not match the signed data" in message


def test_one_character_changed_in_the_signature(env: World, parts: Parts, tmp_path: Path) -> None:
    lines = parts.signatures[0].split(b"\n")
    body = bytearray(lines[-3])  # the last base64 line: the Ed25519 signature itself
    body[10] = ord("A") if body[10] != ord("A") else ord("B")
    lines[-3] = bytes(body)
    changed = write_parts(tmp_path / "t.airbundle", replace(parts, signatures=(b"\n".join(lines),)))
    with pytest.raises(SignatureError) as info:
        verify(env, changed)
    assert f"invalid signatures: {SIG0}: signature by SHA256:" in info.value.message
    assert "does not match the signed data" in info.value.message


def test_garbled_signature(env: World, parts: Parts, tmp_path: Path) -> None:
    changed = write_parts(tmp_path / "t.airbundle", replace(parts, signatures=(b"garbage\n",)))
    with pytest.raises(SignatureError) as info:
        verify(env, changed)
    assert f"invalid signatures: {SIG0}: signature is not SSHSIG armored text" in (
        info.value.message
    )


def test_trusting_another_key(env: World) -> None:
    with pytest.raises(SignatureError) as info:
        verify_bundle(env.bundle, env.policy(other=True), at=NOW)
    assert info.value.message.startswith(
        f"{env.bundle}: bundle has 0 trusted signature(s) of 1 required; signers: SHA256:"
    )
    assert f"in {SIG0} (not in trust set)" in info.value.message
    assert "trusted signature" in info.value.diagnostics()
    assert "add the signer's key to the trust file" in info.value.diagnostics()


def test_flips_across_the_content_region_all_fail(env: World, tmp_path: Path) -> None:
    data = env.bundle.read_bytes()
    start = content_start(data)
    length = len(data) - start
    target = tmp_path / "flipped.airbundle"
    outcomes = {}
    for i in range(20):
        pos = start + length * (2 * i + 1) // 40  # the middle of each twentieth
        target.write_bytes(flip(data, pos))
        with pytest.raises(IntegrityError) as info:
            verify(env, target)
        assert type(info.value) in (ArchiveError, MemberDigestError, TruncatedError), pos
        assert info.value.message
        outcomes[pos - start] = info.value.message
    assert len(outcomes) == 20
    # Each frame is checked (zstd checksum) before any of its bytes are handed
    # on; a damaged frame names the member whose frames it is.
    named = [m for m in outcomes.values() if "in the frames of member 'images/" in m]
    assert len(named) >= 10, outcomes


def test_flip_in_the_middle_of_the_content_region(env: World, tmp_path: Path) -> None:
    data = env.bundle.read_bytes()
    start = content_start(data)
    target = tmp_path / "flipped.airbundle"
    target.write_bytes(flip(data, start + (len(data) - start) // 2))
    with pytest.raises(IntegrityError) as info:
        verify(env, target)
    assert str(target) in info.value.message or "member" in info.value.message


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_truncated_stream_without_a_file_size(env: World, fraction: float) -> None:
    """From a pipe the file size is unknown: the tar and length checks at the end catch it."""
    import io

    from airbundle.format.archive import BundleReader
    from airbundle.ops.verify import stream_members

    data = env.bundle.read_bytes()
    reader = BundleReader(io.BytesIO(data[: int(len(data) * fraction)]), source="pipe")
    with pytest.raises(TruncatedError, match=r"^pipe: "):
        prefix = reader.read_prefix()
        from airbundle.format.manifest import BundleManifest

        stream_members(reader, BundleManifest.from_bytes(prefix.manifest))


@pytest.mark.parametrize("tail", [b"garbage!", b"\0" * 100, b"\x28\xb5\x2f\xfd"])
def test_trailing_bytes_on_a_stream_without_a_file_size(env: World, tail: bytes) -> None:
    import io

    from airbundle.format.archive import BundleReader
    from airbundle.format.manifest import BundleManifest
    from airbundle.ops.verify import stream_members

    reader = BundleReader(io.BytesIO(env.bundle.read_bytes() + tail), source="pipe")
    with pytest.raises(ArchiveError, match=r"^pipe: "):
        prefix = reader.read_prefix()
        stream_members(reader, BundleManifest.from_bytes(prefix.manifest))


# Each damages the exported bundle's bytes (to be written at `target`) and says what
# verify must raise, and a pattern its message matches.
Damage = Callable[[bytes, Path], tuple[bytes, type[AirbundleError], str]]


def truncated(fraction: float) -> Damage:
    def damage(data: bytes, target: Path) -> tuple[bytes, type[AirbundleError], str]:
        cut = data[: int(len(data) * fraction)]
        return cut, TruncatedError, rf"^{target}: the bundle is truncated: "

    return damage


def cut_at_the_end(cut: int) -> Damage:
    def damage(data: bytes, target: Path) -> tuple[bytes, type[AirbundleError], str]:
        return data[:-cut], TruncatedError, rf"^{target}: "

    return damage


def trailing(tail: bytes) -> Damage:
    def damage(data: bytes, target: Path) -> tuple[bytes, type[AirbundleError], str]:
        return data + tail, ArchiveError, rf"^{target}: {len(tail)} unexpected bytes after"

    return damage


def partial_frame_after_the_last_frame(
    data: bytes, target: Path
) -> tuple[bytes, type[AirbundleError], str]:
    return data + b"\x28\xb5\x2f\xfd", IntegrityError, rf"^{target}: "


def zstd_frame_with_data_after_the_archive(
    data: bytes, target: Path
) -> tuple[bytes, type[AirbundleError], str]:
    extra = zstandard.ZstdCompressor().compress(b"smuggled")
    return data + extra, ArchiveError, r"unexpected bytes after the end of the bundle"


DAMAGED_FILES = [
    *(pytest.param(truncated(f), id=f"truncated-{f}") for f in (0.5, 0.9, 0.99)),
    *(pytest.param(cut_at_the_end(c), id=f"cut-{c}-at-the-end") for c in (1, 4, 13)),
    pytest.param(partial_frame_after_the_last_frame, id="partial-frame-after-the-last"),
    pytest.param(trailing(b"garbage!"), id="trailing-text"),
    pytest.param(trailing(b"\0" * 100), id="trailing-zeros"),
    pytest.param(zstd_frame_with_data_after_the_archive, id="zstd-frame-after-the-archive"),
]


@pytest.mark.parametrize("damage", DAMAGED_FILES)
def test_a_damaged_bundle_file_is_refused(env: World, tmp_path: Path, damage: Damage) -> None:
    target = tmp_path / "damaged.airbundle"
    data, error, message = damage(env.bundle.read_bytes(), target)
    target.write_bytes(data)
    with pytest.raises(error, match=message):
        verify(env, target)


def test_not_a_bundle(env: World, tmp_path: Path) -> None:
    target = tmp_path / "plain.tar.zst"
    import zstandard

    target.write_bytes(zstandard.ZstdCompressor().compress(tar_bytes([("a", b"1")])))
    with pytest.raises(ArchiveError, match=rf"^{target}: not an airbundle file"):
        verify(env, target)
    empty = tmp_path / "empty.airbundle"
    empty.write_bytes(b"")
    with pytest.raises(TruncatedError, match=rf"^{empty}: too short to be an airbundle \(0 bytes"):
        verify(env, empty)


# --- verify: crafted bundles ---------------------------------------------------------


def test_crafted_bundle_verifies(env: World, tmp_path: Path) -> None:
    verify(env, signed_bundle(tmp_path / "ok.airbundle", env.key, small_members()))


def test_signature_copied_twice_counts_once(env: World, tmp_path: Path) -> None:
    members = small_members()
    manifest = make_manifest(members).to_bytes()
    sig = sign(manifest, env.key)
    bundle = write_bundle(tmp_path / "t.airbundle", manifest, [sig, sig], members)
    both = replace(env.policy(), keys=(*env.policy().keys, *env.policy(other=True).keys))
    with pytest.raises(
        SignatureError,
        match=r"bundle has 1 trusted signature\(s\) of 2 required.*"
        "the same key as another signature: counted once",
    ):
        verify_bundle(bundle, replace(both, threshold=2), at=NOW)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (raw_header(b"images/evil", typeflag=b"2"), r"'images/evil' at offset \d+ is a symbolic"),
        (raw_header(b"../../etc/passwd"), r"unsafe member path '\.\./\.\./etc/passwd'"),
        (raw_header(b"images/pax", typeflag=b"x"), r"'images/pax' at offset \d+ is a PAX ext"),
        (
            encode_header("images/stray", 0, kind=DIRECTORY),
            r"folder entry 'images/stray' is not declared by the manifest",
        ),
    ],
    ids=["symlink", "traversal", "pax", "stray-folder"],
)
def test_unsafe_content_member(env: World, tmp_path: Path, header: bytes, message: str) -> None:
    members = small_members()
    manifest = make_manifest(members).to_bytes()
    content = tar_bytes(members[:2], end=False) + header + tar_bytes(members[2:])
    bundle = raw_bundle(
        tmp_path / "t.airbundle", prefix_tar(manifest, [sign(manifest, env.key)]), content
    )
    with pytest.raises(ArchiveError, match=message):
        verify(env, bundle)


def _manifest_with_created(created: str) -> bytes:
    doc = make_manifest(small_members()).to_json()
    doc["bundle"]["created"] = created
    return json.dumps(doc).encode()


# Each builds a bundle with one thing wrong and says what verify must raise: the
# error class and a pattern its message matches (naming the bundle and the member).
Refusal = tuple[Path, type[AirbundleError], str]


def member_not_in_manifest(env: World, tmp_path: Path) -> Refusal:
    listed = small_members()
    extra = blob(b"smuggled")
    bundle = signed_bundle(tmp_path / "t.airbundle", env.key, [*listed, extra], listed=listed)
    return (
        bundle,
        ArchiveError,
        rf"^{bundle}: member '{extra[0]}' is not listed in the signed manifest$",
    )


def member_missing(env: World, tmp_path: Path) -> Refusal:
    members = small_members()
    listed = [*members, blob(b"never sent"), blob(b"nor this")]
    bundle = signed_bundle(tmp_path / "t.airbundle", env.key, members, listed=listed)
    return (
        bundle,
        TruncatedError,
        rf"^{bundle}: member '{listed[-2][0]}' and 1 more "
        "listed in the manifest is missing from the archive$",
    )


def duplicate_member(env: World, tmp_path: Path) -> Refusal:
    members = small_members()
    bundle = signed_bundle(
        tmp_path / "t.airbundle", env.key, [*members, members[2]], listed=members
    )
    return bundle, ArchiveError, rf"^{bundle}: member '{members[2][0]}' appears twice$"


def member_size_mismatch(env: World, tmp_path: Path) -> Refusal:
    listed = small_members()
    path, data = listed[3]
    sent = [*listed[:3], (path, data[:-1])]
    bundle = signed_bundle(tmp_path / "t.airbundle", env.key, sent, listed=listed)
    return (
        bundle,
        MemberDigestError,
        rf"^{bundle}: member '{path}' has {len(data) - 1} "
        rf"bytes in the archive, the signed manifest says {len(data)}$",
    )


def member_digest_mismatch(env: World, tmp_path: Path) -> Refusal:
    listed = small_members()
    path, data = listed[2]
    sent = [*listed[:2], (path, flip(data, 0)), listed[3]]
    bundle = signed_bundle(tmp_path / "t.airbundle", env.key, sent, listed=listed)
    return (
        bundle,
        MemberDigestError,
        rf"^{bundle}: member '{path}' is corrupt or was "
        rf"tampered with: .*the signed manifest says sha256:{path[-64:]}$",
    )


def manifest_not_first(env: World, tmp_path: Path) -> Refusal:
    members = small_members()
    manifest = make_manifest(members).to_bytes()
    prefix = tar_bytes(
        [members[0], (MANIFEST_PATH, manifest), (SIG0, sign(manifest, env.key))], end=False
    )
    bundle = raw_bundle(tmp_path / "t.airbundle", prefix, tar_bytes(members[1:]))
    return (
        bundle,
        ArchiveError,
        rf"^{bundle}: the first member is 'images/oci-layout', "
        "not 'airbundle/manifest.json'; a bundle must start with its manifest$",
    )


def empty_archive(env: World, tmp_path: Path) -> Refusal:
    bundle = raw_bundle(tmp_path / "t.airbundle", b"", tar_bytes([]))
    return bundle, ArchiveError, rf"^{bundle}: the bundle is empty$"


def no_signature(env: World, tmp_path: Path) -> Refusal:
    members = small_members()
    bundle = write_bundle(tmp_path / "t.airbundle", make_manifest(members).to_bytes(), [], members)
    return (
        bundle,
        SignatureError,
        rf"^{bundle}: the bundle carries no signature; it cannot be trusted$",
    )


def signature_by_an_untrusted_key(env: World, tmp_path: Path) -> Refusal:
    bundle = signed_bundle(tmp_path / "t.airbundle", env.other_key, small_members())
    return (
        bundle,
        SignatureError,
        rf"^{bundle}: bundle has 0 trusted signature\(s\) of "
        rf"1 required; signers: SHA256:\S+ in {SIG0} \(not in trust set\)$",
    )


def signature_for_another_namespace(env: World, tmp_path: Path) -> Refusal:
    members = small_members()
    manifest = make_manifest(members).to_bytes()
    bundle = write_bundle(
        tmp_path / "t.airbundle", manifest, [sign(manifest, env.key, namespace="other")], members
    )
    return (
        bundle,
        SignatureError,
        rf"invalid signatures: {SIG0}: signature is for "
        "namespace 'other', expected 'airbundle'$",
    )


def duplicate_signature_member(env: World, tmp_path: Path) -> Refusal:
    members = small_members()
    manifest = make_manifest(members).to_bytes()
    sig = sign(manifest, env.key)
    prefix = tar_bytes([(MANIFEST_PATH, manifest), (SIG0, sig), (SIG0, sig)], end=False)
    bundle = raw_bundle(tmp_path / "t.airbundle", prefix, tar_bytes(members))
    return bundle, ArchiveError, rf"^{bundle}: duplicate member '{SIG0}'$"


def signature_member_out_of_place(env: World, tmp_path: Path) -> Refusal:
    members = small_members()
    manifest = make_manifest(members).to_bytes()
    sig = sign(manifest, env.key)
    late = (signature_path(1), sign(manifest, env.other_key))
    bundle = raw_bundle(
        tmp_path / "t.airbundle",
        prefix_tar(manifest, [sig]),
        tar_bytes([members[0], late, *members[1:]]),
    )
    return (
        bundle,
        ArchiveError,
        rf"^{bundle}: member '{late[0]}' is out of place: "
        "manifest and signatures must come first$",
    )


def signed_manifest_that_is_not_json(env: World, tmp_path: Path) -> Refusal:
    manifest = b'{"apiVersion": "airbundle/v1", '
    bundle = write_bundle(
        tmp_path / "t.airbundle", manifest, [sign(manifest, env.key)], small_members()
    )
    return bundle, ManifestError, r"^bundle manifest is not valid JSON"


def signed_manifest_with_schema_error(env: World, tmp_path: Path) -> Refusal:
    manifest = _manifest_with_created("yesterday")
    bundle = write_bundle(
        tmp_path / "t.airbundle", manifest, [sign(manifest, env.key)], small_members()
    )
    return (
        bundle,
        ManifestError,
        r"^bundle manifest: field bundle\.created: 'yesterday' does not match",
    )


CRAFTED = [
    member_not_in_manifest,
    member_missing,
    duplicate_member,
    member_size_mismatch,
    member_digest_mismatch,
    manifest_not_first,
    empty_archive,
    no_signature,
    signature_by_an_untrusted_key,
    signature_for_another_namespace,
    duplicate_signature_member,
    signature_member_out_of_place,
    signed_manifest_that_is_not_json,
    signed_manifest_with_schema_error,
]


@pytest.mark.parametrize("craft", CRAFTED, ids=lambda craft: craft.__name__)
def test_a_crafted_bundle_is_refused_naming_what_is_wrong(
    env: World, tmp_path: Path, craft: Callable[[World, Path], Refusal]
) -> None:
    bundle, error, message = craft(env, tmp_path)
    with pytest.raises(error, match=message):
        verify(env, bundle)


@pytest.mark.parametrize("operation", ["verify", "inspect"])
def test_signed_manifest_with_impossible_date(env: World, tmp_path: Path, operation: str) -> None:
    manifest = _manifest_with_created("2024-13-45T99:00:00Z")
    bundle = write_bundle(
        tmp_path / "t.airbundle", manifest, [sign(manifest, env.key)], small_members()
    )
    with pytest.raises(ManifestError, match=r"bundle\.created"):
        if operation == "verify":
            verify(env, bundle)
        else:
            inspect_bundle(bundle)


# --- import of tampered bundles writes nothing ------------------------------------------


def tampered(env: World, parts: Parts, tmp_path: Path, kind: str) -> Path:
    target = tmp_path / f"{kind}.airbundle"
    if kind == "blob":
        path = parts.members[-2][0]  # late in the archive: earlier blobs are already written
        return write_parts(target, parts.replace_member(path, flip(parts.member(path), 7)))
    if kind == "git":
        data = parts.member(GIT_MEMBER)
        return write_parts(target, parts.replace_member(GIT_MEMBER, flip(data, len(data) - 30)))
    if kind == "manifest":
        manifest = parts.manifest.replace(b'"name": "samples"', b'"name": "samplez"', 1)
        return write_parts(target, replace(parts, manifest=manifest))
    if kind == "signature":
        return write_parts(
            target, replace(parts, signatures=(sign(parts.manifest, env.other_key),))
        )
    data = env.bundle.read_bytes()
    if kind == "truncated":
        target.write_bytes(data[: len(data) - 200])
    elif kind == "garbage":
        target.write_bytes(data + b"garbage")
    else:  # a flip in the middle of the content region
        target.write_bytes(flip(data, content_start(data) + (len(data) - content_start(data)) // 2))
    return target


TAMPERED = {
    "blob": MemberDigestError,
    "git": MemberDigestError,
    "manifest": SignatureError,
    "signature": SignatureError,
    "truncated": TruncatedError,
    "garbage": ArchiveError,
    "flip": IntegrityError,
}


def assert_nothing_imported(oci: Path, git: Path) -> None:
    index = oci / "index.json"
    if index.exists():
        assert json.loads(index.read_bytes())["manifests"] == []
    assert not (oci / "airbundle-import.json").exists()
    if git.exists():
        assert [p.name for p in git.iterdir()] == []  # no *.git, no staged bundle
    assert temp_files(oci, git) == []


def import_options(
    env: World, oci: Path, git: Path, *, other: bool = False, state: Path | None = None
) -> ImportOptions:
    return ImportOptions(
        policy=env.policy(other=other),
        registry=f"oci:{oci}",
        git=str(git),
        at=NOW,
        state_dir=state,
    )


@pytest.mark.parametrize("kind", list(TAMPERED))
def test_import_of_a_tampered_bundle_writes_nothing(
    env: World, parts: Parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    bundle = tampered(env, parts, tmp_path, kind)
    oci, git = tmp_path / "oci", tmp_path / "git"
    scratch = tmp_path / "scratch"  # the importer's own temporary folders go here
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(TAMPERED[kind]) as info:
        import_bundle(bundle, import_options(env, oci, git))
    assert str(bundle) in info.value.message or "member" in info.value.message
    if kind in ("blob", "git"):
        assert "member '" in info.value.message
    assert_nothing_imported(oci, git)
    assert list(scratch.iterdir()) == []


def test_import_with_the_wrong_key_creates_no_target(env: World, tmp_path: Path) -> None:
    oci, git = tmp_path / "oci", tmp_path / "git"
    with pytest.raises(SignatureError, match=r"0 trusted signature\(s\) of 1 required"):
        import_bundle(env.bundle, import_options(env, oci, git, other=True))
    assert not oci.exists()
    assert not git.exists()


def git_refs(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "for-each-ref", "--format=%(refname) %(objectname)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_good_import_then_tampered_import_changes_nothing(
    env: World, parts: Parts, tmp_path: Path
) -> None:
    oci, git = tmp_path / "oci", tmp_path / "git"
    import_bundle(env.bundle, import_options(env, oci, git))
    index = json.loads((oci / "index.json").read_bytes())
    assert len(index["manifests"]) == len(env.export.manifest.images)
    refs_before = git_refs(git / "gitops.git")
    assert "refs/heads/main" in refs_before
    before = snapshot(oci)
    for kind in ("blob", "git", "flip"):
        # A state of its own, so that freshness (same sequence, other manifest)
        # does not stop the import before the tampering is found.
        options = import_options(env, oci, git, state=tmp_path / f"state-{kind}")
        with pytest.raises(TAMPERED[kind]):
            import_bundle(tampered(env, parts, tmp_path, kind), options)
        assert snapshot(oci) == before
        assert git_refs(git / "gitops.git") == refs_before
        assert temp_files(oci, git) == []


def _lying_refs(env: World, parts: Parts, tmp_path: Path) -> Path:
    """Signed by the trusted key, but the manifest claims a ref target the git bundle lacks."""
    manifest = BundleManifest.from_bytes(parts.manifest)
    repo = manifest.repos[0]
    refs = tuple(
        RefEntry(r.name, "1" * 40) if r.name == "refs/heads/main" else r for r in repo.refs
    )
    data = replace(manifest, repos=(replace(repo, refs=refs),)).to_bytes()
    return write_bundle(tmp_path / "lying.airbundle", data, [sign(data, env.key)], parts.members)


def test_import_of_lying_refs_is_refused(env: World, parts: Parts, tmp_path: Path) -> None:
    oci, git = tmp_path / "oci", tmp_path / "git"
    with pytest.raises(
        TargetError,
        match=r"^repo 'gitops': bundle ref refs/heads/main does not "
        "point at 1{40} as the manifest says$",
    ):
        import_bundle(_lying_refs(env, parts, tmp_path), import_options(env, oci, git))
    assert json.loads((oci / "index.json").read_bytes())["manifests"] == []
    assert temp_files(oci, git) == []


def test_import_of_lying_refs_leaves_no_repo(env: World, parts: Parts, tmp_path: Path) -> None:
    oci, git = tmp_path / "oci", tmp_path / "git"
    with pytest.raises(TargetError):
        import_bundle(_lying_refs(env, parts, tmp_path), import_options(env, oci, git))
    assert list(git.glob("*.git")) == []


def test_epoch_is_the_bundle_time(env: World) -> None:
    assert int(env.export.manifest.bundle.created.timestamp()) == EPOCH
