"""Every JSON document airbundle reads is checked against its JSON Schema before
use (issue 11, item 5): a document of the wrong shape is a named error with its
exit code, never a Python traceback, and a damaged state file is refused, never
taken for an empty one. Hypothesis feeds the volume index, inventory, state and
lock parsers random and mutated documents."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from airbundle.adapters.docker_archive import DockerArchiveSource
from airbundle.errors import (
    EXIT_INTEGRITY,
    EXIT_IO,
    EXIT_OK,
    EXIT_USAGE,
    AirbundleError,
    InvalidOCIError,
    ManifestError,
    SourceError,
    StateError,
    TargetError,
    UsageError,
)
from airbundle.format import schemas
from airbundle.format.digest import Digest
from airbundle.format.inventory import parse_inventory
from airbundle.format.manifest import ImageEntry
from airbundle.format.oci import parse_manifest
from airbundle.format.reference import ImageReference
from airbundle.format.volumes import VolumeIndex
from airbundle.ops.plan import read_lock
from airbundle.ops.state import StateStore
from support import cli
from support.cli import refused
from support.crafting import World, blob, make_manifest, snapshot, world, write_bundle
from support.env import REPO_ROOT

TIMEOUT = 120
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DIGEST = "sha256:" + "a" * 64
OID = "1" * 40


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return cli.run(*args, timeout=TIMEOUT)


# --- every schema ships, is valid 2020-12, and is the one the package loads ----------


@pytest.mark.parametrize("name", schemas.ALL)
def test_every_schema_is_valid_json_schema_2020_12_and_ships(name: str) -> None:
    schema = json.loads((REPO_ROOT / "schemas" / name).read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (REPO_ROOT / "airbundle" / "schemas" / name).read_bytes() == (
        REPO_ROOT / "schemas" / name
    ).read_bytes()
    schemas.validator(name)  # loads from the package


# --- the volume index ----------------------------------------------------------------

GOOD_INDEX: dict[str, Any] = {
    "apiVersion": "airbundle/v1",
    "kind": "VolumeIndex",
    "bundle": "b.airbundle",
    "totalLength": 10,
    "volumes": [{"name": "b.airbundle.001", "size": 10, "coveredFrom": 2, "digest": DIGEST}],
}


def _with(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A deep copy of `doc` with the field at `path` (dots, numeric list indexes) set."""
    out: Any = json.loads(json.dumps(doc))
    node = out
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out  # type: ignore[no-any-return]


BAD_INDEXES = {
    "list": [],
    "number": 5,
    "null": None,
    "digest-number": _with(GOOD_INDEX, "volumes.0.digest", 5),
    "size-string": _with(GOOD_INDEX, "volumes.0.size", "10"),
    "volumes-object": _with(GOOD_INDEX, "volumes", {}),
    "volume-list": _with(GOOD_INDEX, "volumes.0", [1]),
    "name-number": _with(GOOD_INDEX, "volumes.0.name", 1),
    "bundle-list": _with(GOOD_INDEX, "bundle", ["b"]),
    "no-volumes": {k: v for k, v in GOOD_INDEX.items() if k != "volumes"},
    "total-bool": _with(GOOD_INDEX, "totalLength", True),
}


def test_the_good_volume_index_parses() -> None:
    index = VolumeIndex.from_bytes(json.dumps(GOOD_INDEX).encode(), source="t")
    assert index.volumes[0].digest == Digest.parse(DIGEST)


@pytest.mark.parametrize("doc", BAD_INDEXES.values(), ids=BAD_INDEXES.keys())
def test_a_volume_index_of_the_wrong_shape_is_a_manifest_error(doc: object) -> None:
    with pytest.raises(ManifestError, match=r"^volume index t"):
        VolumeIndex.from_bytes(json.dumps(doc).encode(), source="t")


@pytest.mark.parametrize("case", ["list", "number", "digest-number"])
def test_the_cli_refuses_a_volume_index_of_the_wrong_shape(
    env: World, tmp_path: Path, case: str
) -> None:
    index = tmp_path / "b.airbundle.volumes"
    index.write_text(json.dumps(BAD_INDEXES[case]))
    refused(run("verify", index, "--trust", env.pub_path), EXIT_INTEGRITY, "volume index")


# --- inventories (export --since) ------------------------------------------------------

GOOD_INVENTORY: dict[str, Any] = {
    "apiVersion": "airbundle/v1",
    "kind": "Inventory",
    "created": "2025-01-01T00:00:00Z",
    "target": "images=oci:/x",
    "blobs": [DIGEST],
    "repos": {"gitops": {"refs/heads/main": OID}},
}
BAD_INVENTORIES = {
    "list": [],
    "blobs-number": _with(GOOD_INVENTORY, "blobs", [5]),
    "repos-list": _with(GOOD_INVENTORY, "repos", []),
    "refs-list": _with(GOOD_INVENTORY, "repos.gitops", []),
    "oid-number": _with(GOOD_INVENTORY, "repos.gitops.refs/heads/main", 5),
    "created-number": _with(GOOD_INVENTORY, "created", 5),
    "created-free-text": _with(GOOD_INVENTORY, "created", "\x1b]0;owned\x07"),
    "target-escape": _with(GOOD_INVENTORY, "target", "x\x1b[2Jy"),
    "target-newline": _with(GOOD_INVENTORY, "target", "x\ry"),
    "kind": _with(GOOD_INVENTORY, "kind", "BundleManifest2"),
}


def test_the_good_inventory_parses() -> None:
    inventory = parse_inventory(json.dumps(GOOD_INVENTORY).encode(), source="t")
    assert inventory.repos == {"gitops": {"refs/heads/main": OID}}


@pytest.mark.parametrize("doc", BAD_INVENTORIES.values(), ids=BAD_INVENTORIES.keys())
def test_an_inventory_of_the_wrong_shape_is_a_manifest_error(doc: object) -> None:
    with pytest.raises(ManifestError, match=r"^inventory t"):
        parse_inventory(json.dumps(doc).encode(), source="t")


@pytest.mark.parametrize("case", ["blobs-number", "repos-list", "target-escape"])
def test_export_since_an_inventory_of_the_wrong_shape_fails_cleanly(
    env: World, tmp_path: Path, case: str
) -> None:
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps(BAD_INVENTORIES[case]))
    out = tmp_path / "out.airbundle"
    proc = run("export", env.spec, "-o", out, "--key", env.key_path, "--since", inventory)
    refused(proc, EXIT_INTEGRITY, "inventory", "is malformed")
    assert not out.exists()


# --- signed manifests and the OCI documents they carry --------------------------------


def _image_bundle(
    path: Path, env: World, root: dict[str, Any], *, media_type: str = OCI_MANIFEST
) -> Path:
    """A bundle signed by the session key: one image whose root is `root`."""
    data = json.dumps(root).encode()
    members = [blob(data)]
    image = ImageEntry(
        ImageReference.parse("example.com/x:1"),
        "crafted",
        Digest.sha256_of(data),
        media_type,
        len(data),
    )
    manifest = make_manifest(members, images=[image])
    return write_bundle(path, manifest, [], members, keys=[env.key])


GOOD_ROOT: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": OCI_MANIFEST,
    "config": {"mediaType": OCI_CONFIG, "digest": DIGEST, "size": 2},
    "layers": [],
}
BAD_ROOTS = {
    "media-type-list": _with(GOOD_ROOT, "mediaType", [OCI_MANIFEST]),
    "media-type-number": _with(GOOD_ROOT, "mediaType", 5),
    "config-list": _with(GOOD_ROOT, "config", []),
    "config-size-string": _with(GOOD_ROOT, "config.size", "2"),
    "config-type-empty": _with(GOOD_ROOT, "config.mediaType", ""),
    "layers-object": _with(GOOD_ROOT, "layers", {}),
    "layer-number": _with(GOOD_ROOT, "layers", [5]),
    "annotations-list": _with(GOOD_ROOT, "annotations", ["a"]),
    "platform-os-number": _with(
        GOOD_ROOT, "config", {**GOOD_ROOT["config"], "platform": {"os": 1, "architecture": "x"}}
    ),
    "subject-string": _with(GOOD_ROOT, "subject", "sha256:x"),
}


@pytest.mark.parametrize("doc", BAD_ROOTS.values(), ids=BAD_ROOTS.keys())
def test_an_oci_document_of_the_wrong_shape_is_an_oci_error(doc: dict[str, Any]) -> None:
    with pytest.raises(InvalidOCIError, match=r"^manifest x is malformed: field "):
        parse_manifest(json.dumps(doc).encode(), declared_type=None, where="manifest x")


def test_a_signed_image_with_an_empty_media_type_is_refused(env: World, tmp_path: Path) -> None:
    bundle = _image_bundle(tmp_path / "b.airbundle", env, GOOD_ROOT, media_type="")
    refused(run("verify", bundle, "--trust", env.pub_path), EXIT_INTEGRITY, "images[0].mediaType")


@pytest.mark.parametrize("case", ["media-type-list", "layers-object", "config-size-string"])
def test_importing_a_root_manifest_of_the_wrong_shape_fails_cleanly(
    env: World, tmp_path: Path, case: str
) -> None:
    bundle = _image_bundle(tmp_path / "b.airbundle", env, BAD_ROOTS[case])
    target = tmp_path / "layout"
    proc = run(
        "import", bundle, "--trust", env.pub_path, "--registry", f"oci:{target}",
        "--state-dir", tmp_path / "state",
    )  # fmt: skip
    refused(proc, EXIT_INTEGRITY, "is malformed")
    assert (
        not (target / "index.json").exists()
        or b"example.com" not in (target / "index.json").read_bytes()
    )
    assert not list((tmp_path / "state").glob("*.json"))


def test_a_layout_index_of_the_wrong_shape_is_refused(env: World, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": [5]}')
    proc = run(
        "import", env.bundle, "--trust", env.pub_path, "--registry", f"oci:{layout}",
        "--git", tmp_path / "git", "--state-dir", tmp_path / "state",
    )  # fmt: skip
    refused(proc, EXIT_IO, "index.json is malformed: field manifests[0]")
    assert not list((tmp_path / "state").glob("*.json"))


# --- import state --------------------------------------------------------------------

TARGET = "images=oci:/x"
GOOD_STATE: dict[str, Any] = {
    "version": 1,
    "target": TARGET,
    "channels": {
        "default": {
            "sequence": 1,
            "manifestDigest": DIGEST,
            "bundleId": "id",
            "created": "",
            "importedAt": "",
        }
    },
    "history": [],
}
BAD_STATES: dict[str, object] = {
    "list": [],
    "empty-object": {},
    "no-manifest-digest": {
        **GOOD_STATE,
        "channels": {"default": {"sequence": 1, "bundleId": "id"}},
    },
    "sequence-string": _with(GOOD_STATE, "channels.default.sequence", "abc"),
    "sequence-negative": _with(GOOD_STATE, "channels.default.sequence", -1),
    "channels-list": _with(GOOD_STATE, "channels", []),
    "history-object": _with(GOOD_STATE, "history", {}),
    "version-2": _with(GOOD_STATE, "version", 2),
    "other-target": _with(GOOD_STATE, "target", "images=oci:/elsewhere"),
}


def _store(tmp_path: Path, content: bytes | None) -> StateStore:
    store = StateStore(tmp_path / "state", TARGET)
    if content is not None:
        store.folder.mkdir(parents=True, exist_ok=True)
        store.path.write_bytes(content)
    return store


def _read(store: StateStore) -> object:
    with store.locked() as state:
        return state


def test_the_good_state_reads_and_an_absent_one_is_new(tmp_path: Path) -> None:
    state = _read(_store(tmp_path, json.dumps(GOOD_STATE).encode()))
    assert state.accepted["default"].sequence == 1  # type: ignore[attr-defined]
    assert _read(_store(tmp_path / "new", None)).accepted == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "content",
    [json.dumps(v).encode() for v in BAD_STATES.values()] + [b"", b"{", b"\xff"],
    ids=[*BAD_STATES.keys(), "empty-file", "cut", "not-utf8"],
)
def test_a_damaged_state_is_refused_never_taken_for_empty(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(StateError, match=r"^import state ") as exc:
        _read(_store(tmp_path, content))
    assert isinstance(exc.value, TargetError)
    assert exc.value.hint == "restore it from backup; deleting it forgets rollback protection"


@pytest.mark.parametrize("case", ["list", "no-manifest-digest", "sequence-string"])
def test_import_refuses_a_damaged_state_and_writes_nothing(
    env: World, tmp_path: Path, case: str
) -> None:
    args = ["--registry", f"oci:{tmp_path / 'layout'}", "--git", tmp_path / "git"]
    first = run("import", env.bundle, "--trust", env.pub_path, *args, "--state-dir", tmp_path)
    assert first.returncode == EXIT_OK, first.stderr
    (state,) = [p for p in tmp_path.glob("target-*.json") if "images=" in p.read_text()]
    state.write_text(json.dumps(BAD_STATES[case]))
    before = snapshot(tmp_path)
    proc = run("import", env.bundle, "--trust", env.pub_path, *args, "--state-dir", tmp_path)
    refused(proc, EXIT_IO, "import state")
    assert "hint: restore it from backup" in proc.stderr
    assert snapshot(tmp_path) == before


# --- lock files, import reports, docker archives, registry lists ----------------------

GOOD_LOCK: dict[str, Any] = {
    "apiVersion": "airbundle/v1",
    "kind": "BundleLock",
    "images": [{"spec": "r/x:1", "ref": "r/x:1", "digest": DIGEST}],
    "repos": [{"name": "gitops", "refs": {"refs/heads/main": OID}}],
}
BAD_LOCKS = {
    "list": [],
    "images-object": _with(GOOD_LOCK, "images", {}),
    "digest-number": _with(GOOD_LOCK, "images.0.digest", 5),
    "spec-list": _with(GOOD_LOCK, "images.0.spec", ["r/x:1"]),
    "refs-list": _with(GOOD_LOCK, "repos.0.refs", []),
    "referrers-object": _with(GOOD_LOCK, "images.0.referrers", {}),
}


def test_the_good_lock_reads(tmp_path: Path) -> None:
    path = tmp_path / "spec.lock"
    path.write_text(json.dumps(GOOD_LOCK))
    assert read_lock(path).repos == {"gitops": {"refs/heads/main": OID}}


@pytest.mark.parametrize("doc", BAD_LOCKS.values(), ids=BAD_LOCKS.keys())
def test_a_lock_of_the_wrong_shape_is_a_usage_error(tmp_path: Path, doc: object) -> None:
    path = tmp_path / "spec.lock"
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=r"^lock file .* is malformed"):
        read_lock(path)


def test_export_with_a_lock_of_the_wrong_shape_fails_cleanly(env: World, tmp_path: Path) -> None:
    lock = tmp_path / "spec.lock"
    lock.write_text(json.dumps(BAD_LOCKS["digest-number"]))
    out = tmp_path / "out.airbundle"
    proc = run("export", env.spec, "-o", out, "--key", env.key_path, "--lock", lock)
    refused(proc, EXIT_USAGE, "lock file", "is malformed")
    assert not out.exists()


@pytest.mark.parametrize(
    "doc",
    [[], {"images": {}}, {"images": [5]}, {"images": [{"source": 1, "target": "x"}]}],
    ids=["list", "images-object", "image-number", "source-number"],
)
def test_a_report_of_the_wrong_shape_is_refused(tmp_path: Path, doc: object) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps(doc))
    refused(run("mirror-config", report, "-o", tmp_path / "out"), EXIT_USAGE, "is malformed")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "doc",
    [[5], [{"Config": 1, "Layers": []}], [{"Config": "c", "Layers": {}}], [{"Layers": []}]],
    ids=["entry-number", "config-number", "layers-object", "no-config"],
)
def test_a_docker_archive_manifest_of_the_wrong_shape_is_a_source_error(
    tmp_path: Path, doc: object
) -> None:
    archive = tmp_path / "saved.tar"
    data = json.dumps(doc).encode()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SourceError, match=r"manifest\.json is malformed"):
        DockerArchiveSource(archive, None, text="docker-archive:saved.tar").resolve()


@pytest.mark.parametrize(
    "doc",
    [{"repositories": {}}, {"repositories": [5]}, {"tags": "x"}, {"tags": [1]}],
    ids=["repositories-object", "repository-number", "tags-string", "tag-number"],
)
def test_a_registry_list_of_the_wrong_shape_fails_its_schema(doc: object) -> None:
    """What RegistryClient._listing checks each page of /v2/_catalog and tags/list
    against (an answer that is not an object is refused before)."""
    with pytest.raises(TargetError, match=r"^registry r: list is malformed: field "):
        schemas.check(schemas.REGISTRY_LIST, doc, what="registry r: list", error=TargetError)


# --- hypothesis: the parsers fail only with airbundle's errors -------------------------

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def mutated(draw: st.DrawFn, good: dict[str, Any]) -> bytes:
    """A valid document with one value somewhere replaced by any JSON value, or
    its serialization cut or changed at one byte."""
    doc: Any = json.loads(json.dumps(good))
    node = doc
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = draw(st.sampled_from(keys))
        if not isinstance(node[key], dict | list) or draw(st.booleans()):
            node[key] = draw(JSON)
            break
        node = node[key]
    data = json.dumps(doc).encode()
    if draw(st.booleans()):
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.binary(max_size=3)) + data[pos + draw(st.integers(0, 3)) :]
    return data


def documents(good: dict[str, Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda v: json.dumps(v).encode()),
        mutated(good),
    )


def _only_ours(parse: Any, data: bytes, expected: type[AirbundleError]) -> None:
    try:
        parse(data)
    except expected as exc:
        assert exc.message
        assert "\n" not in exc.message


@FUZZ
@given(documents(GOOD_INDEX))
@example(json.dumps(GOOD_INDEX).encode())
def test_fuzz_volume_index_parser(data: bytes) -> None:
    _only_ours(lambda d: VolumeIndex.from_bytes(d, source="fuzz"), data, ManifestError)


@FUZZ
@given(documents(GOOD_INVENTORY))
@example(json.dumps(GOOD_INVENTORY).encode())
def test_fuzz_inventory_parser(data: bytes) -> None:
    _only_ours(lambda d: parse_inventory(d, source="fuzz"), data, ManifestError)


@FUZZ
@given(data=documents(GOOD_STATE))
@example(data=json.dumps(GOOD_STATE).encode())
def test_fuzz_state_parser(tmp_path: Path, data: bytes) -> None:
    _only_ours(lambda d: _read(_store(tmp_path, d)), data, StateError)


@FUZZ
@given(data=documents(GOOD_LOCK))
@example(data=json.dumps(GOOD_LOCK).encode())
def test_fuzz_lock_parser(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.lock"

    def parse(d: bytes) -> object:
        path.write_bytes(d)
        return read_lock(path)

    _only_ours(parse, data, UsageError)
