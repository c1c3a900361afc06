"""Fault injection: export and import against real registries behind a faulty proxy.

Every registry is CNCF distribution on 127.0.0.1; between airbundle and it sits
:class:`support.fault_proxy.FaultProxy`, which resets, stalls, cuts uploads, answers
429/5xx or lies about digests on cue. The judges are the upstream registry itself
(asked directly, not through the proxy, :mod:`support.judges`), skopeo, ``airbundle
verify``, and the proxy's record of what the client sent (Range headers, retries,
timing). The import tests share one fixture object, :class:`FaultyImport`.

Also: SIGKILL of the CLI mid-import and mid-export, and a full disk (a 200 KiB tmpfs
mounted inside ``unshare --user --map-root-user --mount``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from airbundle import cli
from airbundle.adapters.fsutil import TEMP_MARK
from airbundle.adapters.registry.client import RegistryClient
from airbundle.adapters.registry.transport import Transport
from airbundle.errors import IntegrityError, SourceError, TargetError, UploadLostError
from airbundle.format.digest import Digest
from airbundle.limits import DEFAULT_LIMITS
from airbundle.ops.export import ExportResult
from airbundle.ops.importer import ImportReport
from support.bundles import (
    export,
    fast_transport,
    import_,
    leftovers,
    sha256,
    verified_digests,
    write_spec,
)
from support.env import clean_env, hermetic, hermetic_env
from support.fault_proxy import (
    Action,
    CutBody,
    DropUpload,
    Exchange,
    FaultProxy,
    IgnoreRange,
    LoseResponse,
    Respond,
    Stall,
    WrongDigest,
)
from support.integration import starts_servers
from support.judges import assert_complete, assert_no_tags, recorded, registry_state
from support.keys import KeyPair
from support.oci import layout_layers, write_layout
from support.registry import Registry
from support.sigkill import Hold, airbundle_argv, armed, kill_at, start
from support.skopeo import push_oci_layout, skopeo_raw_manifest
from support.tmpfs import on_small_tmpfs

# The registry client's upload buffer: a blob this large or larger goes up in a
# streamed PATCH; twice this is held in memory for a resend.
BUFFER: int = inspect.signature(RegistryClient).parameters["buffer_bytes"].default
IO_CHUNK = DEFAULT_LIMITS.io_chunk_bytes  # the client reads blob downloads in these
# One layer sent in a streamed PATCH (larger than BUFFER), and larger than the
# bytes the client holds for a resend (2 * BUFFER).
BIG = 20 << 20
assert BIG > 2 * BUFFER
IMAGES = ("team/hello:1.0", "team/big:1.0")
MIRRORED = {f"mirror/{r.split(':')[0]}": r.split(":")[1] for r in IMAGES}  # repo -> tag
BLOB_GET = r"/v2/team/[a-z]+/blobs/sha256:"


# --- hermetic environment ---------------------------------------------------------


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic(monkeypatch, tmp_path / "env")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)


# --- content: a tiny OCI layout with one large random layer ------------------------


# --- specs, export, import ------------------------------------------------------------


# --- judging a target registry (asked directly, never through the proxy) ----------------


# --- module fixtures: a seeded source, a bundle, a clean import -------------------------


@pytest.fixture(scope="module")
def big_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_layout(tmp_path_factory.mktemp("big-layout"), "1.0", BIG, seed=20)


@pytest.fixture(scope="module")
@starts_servers
def source(
    tmp_path_factory: pytest.TempPathFactory, hello_layout: Path, big_layout: Path
) -> Iterator[Registry]:
    """team/hello:1.0 (two-platform index, small layers), team/big:1.0 (one 20 MiB layer)."""
    with Registry(tmp_path_factory.mktemp("source")) as reg:
        push_oci_layout(reg, hello_layout, "1.0", "team/hello:1.0")
        push_oci_layout(reg, big_layout, "1.0", "team/big:1.0")
        yield reg


@pytest.fixture(scope="module")
def bundle(
    source: Registry, signing_key: KeyPair, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    folder = tmp_path_factory.mktemp("bundle")
    spec = write_spec(folder / "spec.yaml", *(f"{source.host}/{r}" for r in IMAGES))
    return export(spec, folder / "images.airbundle", signing_key, transport=fast_transport())


@dataclass(frozen=True)
class Reference:
    state: dict[str, dict[str, str]]  # what a clean import leaves: repo -> {tag: digest}
    manifests: list[tuple[str, str]]  # (repo, digest) of every manifest and index


@pytest.fixture(scope="module")
@starts_servers
def reference(
    bundle: ExportResult, signing_key: KeyPair, tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    """A clean import (no proxy, no faults) into a fresh registry."""
    folder = tmp_path_factory.mktemp("reference")
    with Registry(folder / "registry") as reg:
        import_(
            bundle.path,
            signing_key,
            registry=f"{reg.host}/mirror",
            state_dir=folder / "state",
            transport=fast_transport(),
        )
        state = registry_state(reg)
        manifests = []
        for repo, tag in MIRRORED.items():
            raw = skopeo_raw_manifest(reg, f"{repo}:{tag}")
            manifests.append((repo, sha256(raw)))
            manifests += [(repo, m["digest"]) for m in json.loads(raw).get("manifests") or []]
    assert set(state) == set(MIRRORED) and all(state.values()), state
    return Reference(state, manifests)


@pytest.fixture
def proxy(target_registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(target_registry.host) as p:
        yield p


@pytest.fixture
def source_proxy(source: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(source.host) as p:
        yield p


@dataclass
class FaultyImport:
    """The module's bundle imported through a FaultProxy (``proxy``) into a fresh
    registry (``target``), trusting its signer, with its state in ``state``."""

    proxy: FaultProxy
    target: Registry
    bundle: ExportResult
    key: KeyPair
    state: Path
    request: pytest.FixtureRequest

    @cached_property
    def reference(self) -> Reference:
        # Only the tests that compare with a clean import pay for one.
        reference: Reference = self.request.getfixturevalue("reference")
        return reference

    def run(
        self, transport: Transport | None = None, *, bundle: Path | None = None
    ) -> ImportReport:
        """Import (the module's bundle, or ``bundle``) through the proxy under mirror/."""
        return import_(
            bundle or self.bundle.path,
            self.key,
            registry=f"{self.proxy.host}/mirror",
            state_dir=self.state,
            transport=transport or fast_transport(),
        )

    def recorded(self) -> bool:
        """Whether the import state records the bundle as accepted."""
        return recorded(self.state, str(self.bundle.manifest_digest))

    def assert_nothing_landed(self) -> None:
        """No tag in the target, the bundle not recorded: a failed import left no trace
        a re-run or a user could mistake for success."""
        assert_no_tags(self.target, MIRRORED)
        assert not self.recorded()

    def assert_like_a_clean_import(self) -> None:
        assert registry_state(self.target) == self.reference.state


@pytest.fixture
def faulty_import(
    request: pytest.FixtureRequest,
    proxy: FaultProxy,
    target_registry: Registry,
    bundle: ExportResult,
    signing_key: KeyPair,
    tmp_path: Path,
) -> FaultyImport:
    return FaultyImport(proxy, target_registry, bundle, signing_key, tmp_path / "state", request)


# --- the proxy itself ----------------------------------------------------------------


def test_proxy_forwards_and_rewrites_locations(
    proxy: FaultProxy, target_registry: Registry
) -> None:
    client = RegistryClient(proxy.host, fast_transport(), error=TargetError, credentials=None)
    data = b"hello through the proxy\n"
    client.upload_blob("probe/repo", Digest.sha256_of(data), len(data), [data])
    assert client.blob_exists("probe/repo", Digest.sha256_of(data))
    methods = [(e.method, e.status) for e in proxy.requests]
    # The upload session's Location pointed at the upstream; the PUT still came to us.
    assert methods == [("POST", 202), ("PUT", 201), ("HEAD", 200)], methods
    assert target_registry.request("HEAD", f"/v2/probe/repo/blobs/{sha256(data)}").status == 200


# --- export: transient faults are survived ----------------------------------------------


def spec_for(tmp_path: Path, host: str, *images: str) -> Path:
    return write_spec(tmp_path / "spec.yaml", *(f"{host}/{r}" for r in images))


def big_layer(big_layout: Path) -> str:
    (layer,) = layout_layers(big_layout, "1.0")
    return layer


def gets_of(proxy: FaultProxy, digest: str) -> list[Exchange]:
    return [e for e in proxy.matching("GET", BLOB_GET) if e.path.endswith(digest)]


@pytest.mark.parametrize(
    "action",
    [
        # RST: Linux drops what the client had not read yet, so the cut sits on the
        # client's read size and the proxy pauses first to let it read.
        pytest.param(CutBody(2 * IO_CHUNK, reset=True, pause=0.5), id="reset"),
        # FIN mid-read: the client keeps what it had assembled of whole reads.
        pytest.param(CutBody(2 * IO_CHUNK + 12345, reset=False, pause=0.1), id="close"),
        # Silence mid-body, past the read timeout.
        pytest.param(Stall(5.0, after=2 * IO_CHUNK + 100), id="stall"),
    ],
)
def test_export_resumes_a_blob_cut_mid_body_with_range(
    source_proxy: FaultProxy,
    source: Registry,
    big_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    action: CutBody | Stall,
) -> None:
    # The big image: the client reads blobs in 1 MiB pieces and a piece cut short is
    # dropped whole (urllib3 raises IncompleteRead for it), so only a cut past the
    # first MiB can be resumed with a Range request (hello's layers are 2 KiB).
    image = "team/big:1.0"
    layer = big_layer(big_layout)
    source_proxy.add("GET", f"/blobs/{layer}$", action)
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)
    cut = action.after
    assert cut is not None

    export(
        spec_for(tmp_path, source_proxy.host, image),
        out,
        signing_key,
        transport=fast_transport(read_timeout=0.5),
    )

    first, second, *more = gets_of(source_proxy, layer)
    assert not more, gets_of(source_proxy, layer)
    assert first.fault == type(action).__name__ and first.range is None, first
    match = re.fullmatch(r"bytes=(\d+)-", second.range or "")
    assert match, second
    resumed = int(match[1])
    assert 0 < resumed <= cut, (resumed, cut)
    assert second.status == 206, second
    assert verified_digests(out, signing_key) == {image: sha256(skopeo_raw_manifest(source, image))}
    assert leftovers(out.parent, keep=out.name) == []


def test_export_resumes_from_the_start_when_the_server_ignores_range(
    source_proxy: FaultProxy,
    source: Registry,
    big_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    layer = big_layer(big_layout)
    source_proxy.add("GET", f"/blobs/{layer}$", CutBody(2 * IO_CHUNK, reset=True, pause=0.3))
    source_proxy.add("GET", f"/blobs/{layer}$", IgnoreRange(), nth=2)
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)

    export(
        spec_for(tmp_path, source_proxy.host, "team/big:1.0"),
        out,
        signing_key,
        transport=fast_transport(),
    )

    cut, resumed = gets_of(source_proxy, layer)
    assert cut.fault == "CutBody", cut
    assert resumed.range == f"bytes={2 * IO_CHUNK}-" and resumed.status == 200, resumed
    assert verified_digests(out, signing_key) == {
        "team/big:1.0": sha256(skopeo_raw_manifest(source, "team/big:1.0"))
    }


MANIFEST_BODY_FAULTS = [
    pytest.param(CutBody(100, reset=False, pause=0), id="close"),
    pytest.param(CutBody(100, reset=True, pause=0.1), id="reset"),
    pytest.param(Stall(5.0, after=100), id="stall"),
]


@pytest.mark.parametrize("action", MANIFEST_BODY_FAULTS)
def test_export_survives_a_manifest_cut_mid_body(
    source_proxy: FaultProxy, source: Registry, signing_key: KeyPair, tmp_path: Path, action: Action
) -> None:
    source_proxy.add("GET", r"/manifests/1\.0$", action)
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)

    export(
        spec_for(tmp_path, source_proxy.host, "team/hello:1.0"),
        out,
        signing_key,
        transport=fast_transport(read_timeout=0.5),
    )

    assert [e.fault for e in source_proxy.matching("GET", r"/manifests/1\.0$")] == [
        type(action).__name__,
        None,
    ]
    assert verified_digests(out, signing_key) == {
        "team/hello:1.0": sha256(skopeo_raw_manifest(source, "team/hello:1.0"))
    }


@pytest.mark.parametrize("action", MANIFEST_BODY_FAULTS)
def test_export_reports_a_persistently_cut_manifest_as_a_source_error(
    source_proxy: FaultProxy, signing_key: KeyPair, tmp_path: Path, action: Action
) -> None:
    # A child manifest, fetched by digest, this time.
    source_proxy.add("GET", r"/v2/team/hello/manifests/sha256:", action, times=None)
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)

    with pytest.raises(SourceError) as caught:
        export(
            spec_for(tmp_path, source_proxy.host, "team/hello:1.0"),
            out,
            signing_key,
            transport=fast_transport(read_timeout=0.5),
        )

    assert source_proxy.host in caught.value.message
    assert re.search(r"sha256:[0-9a-f]{64}", caught.value.message), caught.value.message
    assert not out.exists() and leftovers(out.parent) == []


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(Respond(503), id="503"),
        pytest.param(Respond(502), id="502"),
        pytest.param(Respond(500), id="500"),
        pytest.param(Stall(20.0), id="stall-before-answer"),
        pytest.param(Stall(20.0, after=1000), id="stall-mid-body"),
        pytest.param(CutBody(1000, reset=True), id="reset-mid-body"),
        pytest.param(CutBody(1000, reset=False), id="close-mid-body"),
    ],
)
def test_export_survives_one_transient_fault_on_a_blob(
    source_proxy: FaultProxy,
    source: Registry,
    hello_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    action: Action,
) -> None:
    layers = layout_layers(hello_layout, "1.0")
    layer = max(layers, key=lambda d: layers[d])
    source_proxy.add("GET", f"/blobs/{layer}$", action)
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)
    start = time.monotonic()

    export(
        spec_for(tmp_path, source_proxy.host, "team/hello:1.0"),
        out,
        signing_key,
        transport=fast_transport(read_timeout=0.5),
    )

    gets = gets_of(source_proxy, layer)
    assert [e.fault for e in gets] == [type(action).__name__, None], gets
    assert gets[1].status in (200, 206)
    if isinstance(action, Stall):
        # The client gave up after its 0.5 s read timeout, not after the 20 s
        # stall (margins wide enough for a loaded machine).
        assert 0.4 < gets[1].started - gets[0].started < 10.0, gets
        assert time.monotonic() - start < 15.0
    assert verified_digests(out, signing_key) == {
        "team/hello:1.0": sha256(skopeo_raw_manifest(source, "team/hello:1.0"))
    }


def test_export_honours_retry_after_on_429(
    source_proxy: FaultProxy, source: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    source_proxy.add("GET", r"/manifests/1\.0$", Respond(429, {"Retry-After": "1"}), nth=1, times=1)
    source_proxy.add("GET", BLOB_GET, Respond(429, {"Retry-After": "1"}), nth=2, times=1)
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)

    export(
        spec_for(tmp_path, source_proxy.host, "team/hello:1.0"),
        out,
        signing_key,
        transport=fast_transport(),
    )

    for pattern in (r"/manifests/1\.0$", BLOB_GET):
        limited = [e for e in source_proxy.matching("GET", pattern) if e.status == 429]
        assert len(limited) == 1, source_proxy.requests
        (after,) = [
            e
            for e in source_proxy.matching("GET", pattern)
            if e.path == limited[0].path and e.started > limited[0].started
        ][:1]
        waited = after.started - limited[0].answered
        assert waited >= 0.95, f"retried {waited:.3f}s after a 429 with Retry-After: 1"
        assert waited < 2.5, waited
    assert verified_digests(out, signing_key)["team/hello:1.0"] == sha256(
        skopeo_raw_manifest(source, "team/hello:1.0")
    )


# --- export: persistent faults fail cleanly ---------------------------------------------


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(Respond(503), id="503-forever"),
        pytest.param(CutBody(1000, reset=False, pause=0), id="cut-forever"),
        pytest.param(Stall(5.0), id="stall-forever"),
    ],
)
def test_export_fails_cleanly_when_a_blob_fault_persists(
    source_proxy: FaultProxy,
    hello_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    action: Action,
) -> None:
    layers = layout_layers(hello_layout, "1.0")
    layer = max(layers, key=lambda d: layers[d])
    source_proxy.add("GET", f"/blobs/{layer}$", action, times=None)
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)
    spec = spec_for(tmp_path, source_proxy.host, "team/hello:1.0")

    with pytest.raises(SourceError) as caught:
        export(spec, out, signing_key, transport=fast_transport(read_timeout=0.5))

    message = caught.value.diagnostics()
    assert layer in message and source_proxy.host in message, message
    assert "Traceback" not in message and "\n" not in caught.value.message
    assert len(gets_of(source_proxy, layer)) == 3  # the whole retry budget, no more
    assert not out.exists()
    assert leftovers(out.parent) == []  # no .airbundle-tmp-* file or folder either


def test_cli_reports_a_persistent_fault_as_one_line(
    source_proxy: FaultProxy,
    hello_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layers = layout_layers(hello_layout, "1.0")
    layer = max(layers, key=lambda d: layers[d])
    source_proxy.add("GET", f"/blobs/{layer}$", Respond(503), times=None)
    monkeypatch.setattr(cli.RegistryOptions, "transport", lambda _self: fast_transport())
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)
    spec = spec_for(tmp_path, source_proxy.host, "team/hello:1.0")

    with pytest.raises(SystemExit) as caught:
        cli.main(["export", str(spec), "-o", str(out), "--key", str(signing_key.private)])

    assert caught.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith("airbundle: error: "), err
    assert layer in err and "HTTP 503" in err and "Traceback" not in err, err
    assert not out.exists() and leftovers(out.parent) == []


# --- import: transient faults are survived ----------------------------------------------


@dataclass(frozen=True)
class Fault:
    method: str
    path: str
    action: Action
    nth: int = 1
    id: str = ""


TRANSIENT = [
    Fault("PUT", r"/manifests/sha256:", Respond(500), id="manifest-put-500"),
    Fault("HEAD", r"/blobs/sha256:", Respond(503), id="blob-head-503"),
    Fault("POST", r"/blobs/uploads/$", Respond(502), id="upload-start-502"),
    Fault("PUT", r"/manifests/1\.0$", Respond(503), id="tag-put-503"),
    Fault("HEAD", r"/blobs/sha256:", Respond(429, {"Retry-After": "1"}), 2, "blob-head-429"),
    Fault("PUT", r"/blobs/uploads/.*digest=", Respond(503), id="small-blob-put-503"),
    Fault("PATCH", r"/blobs/uploads/", Respond(503), id="first-patch-503"),
    Fault("PATCH", r"/blobs/uploads/", Respond(429, {"Retry-After": "1"}), id="patch-429"),
    Fault("PUT", r"/manifests/sha256:", LoseResponse(), id="manifest-put-answer-lost"),
    Fault("PUT", r"/manifests/1\.0$", LoseResponse(), id="tag-put-answer-lost"),
]
UPLOAD_ANSWER_LOST = [
    Fault("PUT", r"/team/hello/blobs/uploads/.*digest=", LoseResponse(), id="small-blob"),
    Fault("PUT", r"/team/hello/blobs/uploads/.*digest=", DropUpload(100), id="small-blob-cut"),
    Fault("PUT", r"/team/big/blobs/uploads/.*digest=", LoseResponse(), id="chunked-blob"),
]


def check_transient(fault: Fault, faulty: FaultyImport) -> None:
    proxy = faulty.proxy
    rule = proxy.add(fault.method, fault.path, fault.action, nth=fault.nth)

    faulty.run()

    assert rule.fired == 1
    (hit,) = [e for e in proxy.requests if e.fault]
    retried = [e for e in proxy.requests if e.started > hit.started and e.method == hit.method]
    # The same request again (an upload's PATCH goes to the session's newest Location;
    # a failed blob-finishing PUT starts a fresh session, as the old one may be gone).
    # Requests run in parallel: the retry is the next one for the same path (a
    # failed blob-finishing PUT starts a fresh session, as the old one may be gone).
    again = [
        e
        for e in retried
        if e.path == hit.path or ("/blobs/uploads/" in hit.path and "/blobs/uploads/" in e.path)
    ]
    assert again, proxy.requests
    assert again[0].status in (200, 201, 202, 204, 404), again  # a real answer
    faulty.assert_like_a_clean_import()
    assert faulty.recorded()


@pytest.mark.parametrize("fault", [pytest.param(f, id=f.id) for f in TRANSIENT])
def test_import_survives_a_transient_fault(fault: Fault, faulty_import: FaultyImport) -> None:
    check_transient(fault, faulty_import)


@pytest.mark.parametrize("fault", [pytest.param(f, id=f.id) for f in UPLOAD_ANSWER_LOST])
def test_import_survives_losing_the_answer_to_a_blob_finishing_put(
    fault: Fault, faulty_import: FaultyImport
) -> None:
    check_transient(fault, faulty_import)


def test_a_patch_cut_before_its_body_arrived_restarts_from_the_bytes_held(
    faulty_import: FaultyImport,
) -> None:
    proxy = faulty_import.proxy
    # The big layer's PATCH is cut before any of its body reached the registry.
    # The client asks where the session stands; it holds nothing (distribution
    # says "0-0", which could also mean one byte), so the client starts a fresh
    # session and sends the body from the bytes it still holds: no re-read.
    proxy.add("PATCH", r"/blobs/uploads/", DropUpload(0))

    report = faulty_import.run()

    patches = proxy.matching("PATCH", r"/blobs/uploads/")
    assert [(e.content_range, e.fault) for e in patches] == [
        (None, "DropUpload"),
        (None, None),
    ], patches
    assert session_of(patches[0]) != session_of(patches[1])
    status = [e for e in proxy.matching("GET", r"/blobs/uploads/") if e.status == 204]
    assert len(status) == 1  # it asked the registry where the session stands
    assert not report.notes  # no second read of the bundle
    faulty_import.assert_like_a_clean_import()


def session_of(exchange: Exchange) -> str:
    return exchange.target.split("?")[0].rsplit("/", 1)[1]


@pytest.mark.parametrize(
    ("after", "reread"),
    [
        # distribution drops a session whose PATCH broke mid-body. Early in the
        # blob the client still holds every byte sent: a fresh session, no re-read.
        pytest.param(1 << 20, False, id="early-in-the-blob"),
        # Late, the first bytes are gone from memory: that blob is read again
        # from the bundle after the first pass, in the same run.
        pytest.param(BIG - (1 << 20), True, id="late-in-the-blob"),
    ],
)
def test_import_survives_an_upload_session_lost_mid_patch(
    after: int, reread: bool, faulty_import: FaultyImport
) -> None:
    proxy = faulty_import.proxy
    proxy.add("PATCH", r"/blobs/uploads/", DropUpload(after))

    report = faulty_import.run()

    patches = proxy.matching("PATCH", r"/blobs/uploads/")
    assert [e.fault for e in patches] == ["DropUpload", None], patches
    assert session_of(patches[0]) != session_of(patches[1])  # a fresh session
    assert any("read again from the bundle" in n for n in report.notes) == reread, report.notes
    faulty_import.assert_like_a_clean_import()
    assert faulty_import.recorded()


def test_a_proxy_that_buffers_the_whole_patch_then_fails_it_costs_one_re_read(
    faulty_import: FaultyImport,
) -> None:
    # As nginx does with proxy_request_buffering on: the whole body is read,
    # then 503. The registry holds nothing and memory no longer holds byte 0.
    faulty_import.proxy.add("PATCH", r"/blobs/uploads/", Respond(503))

    report = faulty_import.run()

    (note,) = report.notes
    assert "read again from the bundle" in note and "mirror/team/big" in note, note
    faulty_import.assert_like_a_clean_import()


def test_damaged_media_mid_patch_is_an_integrity_error_not_a_network_fault(
    faulty_import: FaultyImport, tmp_path: Path
) -> None:
    proxy = faulty_import.proxy
    # One byte flipped in the middle of the bundle (inside the 20 MiB layer):
    # the stream feeding the PATCH fails. That must end the import as damaged
    # media, not be retried, resumed or re-read as if the network had failed.
    damaged = tmp_path / "damaged.airbundle"
    data = bytearray(faulty_import.bundle.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))

    with pytest.raises(IntegrityError) as caught:
        faulty_import.run(bundle=damaged)

    assert not isinstance(caught.value, TargetError)
    assert len(proxy.matching("PATCH", r"/blobs/uploads/")) == 1  # no resend
    assert not proxy.matching("GET", r"/blobs/uploads/")  # no resume attempt
    faulty_import.assert_nothing_landed()


def test_a_second_loss_of_the_same_upload_fails_the_import_without_a_tag(
    faulty_import: FaultyImport,
) -> None:
    # the first read, the re-read
    faulty_import.proxy.add("PATCH", r"/blobs/uploads/", Respond(503), times=2)

    with pytest.raises(UploadLostError) as caught:
        faulty_import.run()

    assert "mirror/team/big" in caught.value.message
    assert "re-run the import" in caught.value.diagnostics()

    faulty_import.assert_nothing_landed()


# --- import: persistent faults fail without a tag; a re-run completes -------------------


PERSISTENT = {
    "manifest-put-500": Fault("PUT", r"/manifests/sha256:", Respond(500)),
    "blob-upload-finish-503": Fault("PUT", r"/blobs/uploads/", Respond(503)),
    "patch-cut": Fault("PATCH", r"/blobs/uploads/", DropUpload(1 << 20)),
    "manifest-head-stall": Fault("HEAD", r"/manifests/sha256:", Stall(5.0)),
}


@pytest.mark.parametrize("name", list(PERSISTENT))
def test_persistent_fault_fails_import_without_a_tag_and_a_rerun_completes(
    name: str, faulty_import: FaultyImport
) -> None:
    fault = PERSISTENT[name]
    proxy = faulty_import.proxy
    proxy.add(fault.method, fault.path, fault.action, times=None)
    transport = fast_transport(read_timeout=0.5 if isinstance(fault.action, Stall) else 10.0)

    with pytest.raises(TargetError) as caught:
        faulty_import.run(transport)

    assert proxy.host in caught.value.message, caught.value.message
    assert re.search(r"sha256:[0-9a-f]{64}", caught.value.message), caught.value.message
    faulty_import.assert_nothing_landed()
    proxy.clear()

    report = faulty_import.run()

    assert not report.noop
    faulty_import.assert_like_a_clean_import()
    assert faulty_import.recorded()


# --- import: a registry lying about what it stored --------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "what"),
    [
        ("PUT", r"/blobs/uploads/.*digest=", "small blob (one PUT)"),
        ("PUT", "BIG", "large blob (PATCHes, then the finishing PUT)"),
        ("PUT", r"/manifests/sha256:", "manifest"),
    ],
    ids=["blob-put", "chunked-blob-put", "manifest-put"],
)
def test_wrong_docker_content_digest_is_caught(
    method: str,
    path: str,
    what: str,
    faulty_import: FaultyImport,
    big_layout: Path,
) -> None:
    proxy = faulty_import.proxy
    wrong = "sha256:" + "e" * 64
    if path == "BIG":
        path = r"/blobs/uploads/.*digest=" + big_layer(big_layout).replace(":", "%3A")
    rule = proxy.add(method, path, WrongDigest(wrong))

    with pytest.raises(TargetError) as caught:
        faulty_import.run()

    assert rule.fired == 1, what
    message = caught.value.message
    (faulted,) = [e for e in proxy.requests if e.fault == "WrongDigest"]
    sent = re.search(r"sha256(?::|%3A)([0-9a-f]{64})", faulted.target)
    assert sent is not None, faulted
    assert f"sha256:{sent[1]}" in message and wrong in message, message
    faulty_import.assert_nothing_landed()


# --- SIGKILL ---------------------------------------------------------------------------


TAG_PUT = r"^/v2/mirror/team/[a-z]+/manifests/1\.0$"
KILL_POINTS = [
    pytest.param(0.2, id="0.2s"),
    pytest.param(0.5, id="0.5s"),
    pytest.param(1.0, id="1.0s"),
    pytest.param(Hold("PATCH", r"/blobs/uploads/"), id="mid-patch"),
    pytest.param(Hold("PUT", TAG_PUT), id="at-first-tag"),
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_mid_import_leaves_no_tag_and_a_rerun_completes(
    point: float | Hold, faulty_import: FaultyImport, tmp_path: Path
) -> None:
    proxy = faulty_import.proxy
    proxy.delay = 0.15  # every answer late: the import takes a few seconds
    argv = airbundle_argv(
        "import", faulty_import.bundle.path, "--trust", faulty_import.key.public,
        "--registry", f"{proxy.host}/mirror", "--state-dir", faulty_import.state, "-q",
    )  # fmt: skip

    proc = start(argv, tmp_path / "killed.log")
    kill_at(proc, tmp_path / "killed.log", proxy, armed(proxy, point))

    tag_puts = [a for a in proxy.arrivals if a[0] == "PUT" and re.search(TAG_PUT, a[1])]
    if isinstance(point, Hold) and point.path == TAG_PUT:
        # Tags go last (several at once): when the first tag PUT is sent, every
        # manifest is in place, so whatever tags landed name complete images.
        assert tag_puts
        for repo, digest in faulty_import.reference.manifests:
            assert_complete(faulty_import.target, repo, digest)
    else:
        assert not tag_puts, "killed too late to test the no-tag rule: slow the proxy down"
        assert_no_tags(faulty_import.target, MIRRORED)
    assert not faulty_import.recorded()

    proxy.delay = 0.0
    proxy.clear()
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=clean_env())
    assert rerun.returncode == 0, rerun.stderr
    faulty_import.assert_like_a_clean_import()
    assert faulty_import.recorded()


EXPORT_KILL_POINTS = [
    pytest.param(0.2, id="0.2s"),
    pytest.param(0.5, id="0.5s"),
    pytest.param(0.9, id="0.9s"),
    # 3 MiB of the big layer arrive, then silence: the bundle is half written.
    pytest.param(Hold("GET", r"/v2/team/big/blobs/sha256:", after=3 << 20), id="mid-blob"),
]


@pytest.mark.parametrize("point", EXPORT_KILL_POINTS)
def test_sigkill_mid_export_leaves_no_bundle_and_a_rerun_succeeds(
    point: float | Hold,
    source_proxy: FaultProxy,
    source: Registry,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    source_proxy.delay = 0.15
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)
    spec = spec_for(tmp_path, source_proxy.host, *IMAGES)
    argv = airbundle_argv("export", spec, "-o", out, "--key", signing_key.private,
                          "--no-cache", "-q")  # fmt: skip

    proc = start(argv, tmp_path / "killed.log")
    kill_at(proc, tmp_path / "killed.log", source_proxy, armed(source_proxy, point))

    assert not out.exists()
    left = leftovers(out.parent)
    assert all(name.startswith(TEMP_MARK) for name in left), left
    if isinstance(point, Hold):  # the bundle was being written when killed
        assert any(p.is_file() for p in out.parent.glob(TEMP_MARK + "*")), left

    source_proxy.delay = 0.0
    source_proxy.clear()
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=clean_env())
    assert rerun.returncode == 0, rerun.stderr
    assert verified_digests(out, signing_key) == {
        r: sha256(skopeo_raw_manifest(source, r)) for r in IMAGES
    }
    # Whatever the killed run left is named as a temporary, never as a bundle.
    assert all(n.startswith(TEMP_MARK) for n in leftovers(out.parent, keep=out.name))


# --- disk full (a 200 KiB tmpfs in a user+mount namespace) ------------------------------


def no_space(text: str) -> bool:
    return "No space left" in text or "ENOSPC" in text


@pytest.fixture(scope="module")
@starts_servers
def disk_full_export(
    tmp_path_factory: pytest.TempPathFactory, hello_layout: Path, signing_key: KeyPair
) -> tuple[list[Any], str]:
    """Export a 1 MiB layer onto a 200 KiB disk: once into an empty folder, once over a
    previous bundle of the same name. Returns the steps' results and the previous
    bundle's sha256."""
    base = tmp_path_factory.mktemp("disk-full-export")
    env = clean_env(hermetic_env(base / "env"))
    layout = write_layout(base / "layout", "1.0", 1 << 20, seed=1)
    big = write_spec(
        base / "big.yaml", {"ref": f"oci:{layout}:1.0", "name": "registry.example.com/team/big:1.0"}
    )
    small = write_spec(
        base / "small.yaml",
        {"ref": f"oci:{hello_layout}:0.9", "name": "registry.example.com/team/hello:0.9"},
    )
    previous = base / "previous.airbundle"
    export(small, previous, signing_key)
    disk = base / "disk"

    def exporting(dest: Path) -> list[str]:
        return airbundle_argv("export", big, "-o", dest, "--key", signing_key.private,
                              "--no-cache", "--force", "-q")  # fmt: skip

    steps: list[dict[str, Any]] = [
        {"mkdir": str(disk / "a"), "argv": exporting(disk / "a" / "out.airbundle")},
        {"place": [str(previous), str(disk / "b" / "out.airbundle")],
         "argv": exporting(disk / "b" / "out.airbundle")},
    ]  # fmt: skip
    return on_small_tmpfs(disk, steps, env), hashlib.sha256(previous.read_bytes()).hexdigest()


def test_export_onto_a_full_disk_leaves_nothing_behind(
    disk_full_export: tuple[list[Any], str],
) -> None:
    (fresh, over), previous = disk_full_export
    for step in (fresh, over):
        assert step["rc"] in (1, 3), step
        assert no_space(step["stderr"]), step["stderr"]
        assert not [e for e in step["entries"] if TEMP_MARK in e], step["entries"]
    assert fresh["entries"] == {"a": "dir"}, fresh["entries"]  # no output file at all
    assert over["entries"]["b/out.airbundle"] == previous  # the previous bundle intact
    assert set(over["entries"]) == {"a", "b", "b/out.airbundle"}


def test_export_onto_a_full_disk_says_so_in_one_clear_error(
    disk_full_export: tuple[list[Any], str],
) -> None:
    for step in disk_full_export[0]:
        assert "Traceback" not in step["stderr"], step["stderr"]
        assert step["stderr"].startswith("airbundle: error: "), step["stderr"]
        assert step["rc"] == 3, step


@pytest.mark.integration
def test_import_into_an_oci_layout_on_a_full_disk_keeps_the_previous_index(
    tmp_path: Path, hello_layout: Path, signing_key: KeyPair
) -> None:
    env = clean_env(hermetic_env(tmp_path / "env"))
    layout = write_layout(tmp_path / "layout", "1.0", 1 << 20, seed=2)
    big = export(
        write_spec(tmp_path / "big.yaml", {"ref": f"oci:{layout}:1.0",
                                            "name": "registry.example.com/team/big:1.0"}),
        tmp_path / "big.airbundle",
        signing_key,
        sequence=2,
    )  # fmt: skip
    small = export(
        write_spec(tmp_path / "small.yaml", {"ref": f"oci:{hello_layout}:0.9",
                                              "name": "registry.example.com/team/hello:0.9"}),
        tmp_path / "small.airbundle",
        signing_key,
        sequence=1,  # imported first; the big one (2) is newer
    )  # fmt: skip
    disk = tmp_path / "disk"
    target = disk / "layout"

    def importing(path: Path) -> list[str]:
        return airbundle_argv("import", path, "--trust", signing_key.public,
                              "--registry", f"oci:{target}", "-q")  # fmt: skip

    first, second = on_small_tmpfs(
        disk, [{"argv": importing(small.path)}, {"argv": importing(big.path)}], env
    )

    assert first["rc"] == 0, first["stderr"]
    assert "layout/index.json" in first["entries"]
    assert second["rc"] in (1, 3), second
    assert no_space(second["stderr"]), second["stderr"]
    assert second["stderr"].startswith("airbundle: error: "), second["stderr"]
    assert "Traceback" not in second["stderr"]
    assert second["entries"]["layout/index.json"] == first["entries"]["layout/index.json"]
    assert not [e for e in second["entries"] if TEMP_MARK in e], second["entries"]
    blob = str(big.manifest.images[0].digest)
    assert f"layout/blobs/sha256/{blob[7:]}" not in second["entries"]
