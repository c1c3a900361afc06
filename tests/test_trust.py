"""Freshness at import (channel, sequence, expiry) against the per-target state,
co-signing with `airbundle sign`, and key rotation with allowed_signers windows.

Judges: the CLI's exit codes and messages, the state file's bytes, snapshots of
the OCI layout, `tar --zstd` and `ssh-keygen -Y verify`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.errors import (
    EXIT_INTEGRITY,
    EXIT_IO,
    EXIT_OK,
    EXIT_USAGE,
    ArchiveError,
    FreshnessError,
    IntegrityError,
    SignatureError,
    StateError,
)
from airbundle.format import archive, sshsig
from airbundle.ops.export import ExportResult
from airbundle.ops.importer import ImportReport
from airbundle.ops.inspect import inspect_bundle
from airbundle.ops.keys import load_signing_key
from airbundle.ops.sign import journal_path, sign_bundle
from airbundle.ops.verify import verify_bundle
from support.bundles import export, import_, trust_policy
from support.crafting import interrupted_sign, snapshot
from support.env import require_tool
from support.keys import KeyPair, make_key

EPOCH = 1704067200  # 2024-01-01T00:00:00Z: every library export here is created then
CREATED = datetime.fromtimestamp(EPOCH, UTC)
ERROR = "airbundle: error: "
WARNING = "airbundle: WARNING: "

# Small specs over the samples' content (absolute paths, so they can live anywhere).
SPECS = {
    "hello": """\
images:
  - ref: oci:{root}/layouts/hello:0.9
    name: registry.example.com/team/hello:0.9
""",
    "app": """\
images:
  - ref: docker-archive:{root}/saved/app.tar
""",
    "hello-and-repo": """\
images:
  - ref: oci:{root}/layouts/hello:0.9
    name: registry.example.com/team/hello:0.9
repos:
  - name: gitops
    url: {root}/gitops
    refs: ["refs/heads/*"]
""",
}


@dataclass(frozen=True)
class Env:
    specs: Path
    a: KeyPair
    b: KeyPair
    key_a: Ed25519PrivateKey
    key_b: Ed25519PrivateKey


@pytest.fixture(scope="module")
def env(sample_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    base = tmp_path_factory.mktemp("trust")
    specs = base / "specs"
    specs.mkdir()
    for name, body in SPECS.items():
        head = f"apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata:\n  name: {name}\n"
        (specs / f"{name}.yaml").write_text(head + body.format(root=sample_tree))
    a = make_key(base / "keys", "a")
    b = make_key(base / "keys", "b")
    return Env(
        specs,
        a,
        b,
        load_signing_key(a.private, passphrase=None),
        load_signing_key(b.private, passphrase=None),
    )


# --- helpers -------------------------------------------------------------------------


def export_sample(
    env: Env,
    out: Path,
    *,
    spec: str = "hello",
    keys: tuple[Ed25519PrivateKey, ...] | None = None,
    **kw: Any,
) -> ExportResult:
    """Export SPECS[spec] signed by a (or ``keys``), at EPOCH, on one thread."""
    path = env.specs / f"{spec}.yaml"
    return export(path, out, *(keys or (env.key_a,)), source_date_epoch=EPOCH, threads=1, **kw)


def importing(env: Env, bundle: Path, target: Path, **kw: Any) -> ImportReport:
    """Import into target/images (an OCI layout); the state lives in target/state."""
    kw.setdefault("state_dir", target / "state")
    return import_(bundle, env.a, registry=f"oci:{target / 'images'}", **kw)


def state_file(state_dir: Path) -> Path:
    files = sorted(state_dir.glob("target-*.json"))
    assert len(files) == 1, files
    return files[0]


def state(state_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(state_file(state_dir).read_text())
    return doc


def accepted_sequences(state_dir: Path) -> dict[str, int]:
    """channel -> sequence (the trust-set half of the key is dropped)."""
    channels = state(state_dir)["channels"]
    return {key.split("@", 1)[0]: entry["sequence"] for key, entry in channels.items()}


def history(state_dir: Path) -> list[tuple[str, int]]:
    return [(h["action"], h["sequence"]) for h in state(state_dir)["history"]]


def refs(target: Path) -> list[str]:
    index = json.loads((target / "images" / "index.json").read_text())
    return sorted(d["annotations"]["org.opencontainers.image.ref.name"] for d in index["manifests"])


def cli_env() -> dict[str, str]:
    drop = ("AIRBUNDLE_PASSPHRASE", "SOURCE_DATE_EPOCH")
    return {k: v for k, v in os.environ.items() if k not in drop}


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airbundle", *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )


def cli_import(
    env: Env, bundle: Path, target: Path, *extra: object
) -> subprocess.CompletedProcess[str]:
    return cli(
        "import",
        bundle,
        "--trust",
        env.a.public,
        "--registry",
        f"oci:{target / 'images'}",
        "--state-dir",
        target / "state",
        *extra,
    )


def error_of(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.stdout == ""
    assert proc.stderr.startswith(ERROR), proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr[len(ERROR) :]


def run(*args: object, stdin: bytes | None = None) -> str:
    proc = subprocess.run([str(a) for a in args], input=stdin, capture_output=True, check=False)
    assert proc.returncode == 0, f"{args}: {proc.stderr.decode()}"
    return proc.stdout.decode()


# --- sequence: rollback, replay, reuse --------------------------------------------------


def test_older_sequence_is_refused_as_a_rollback_and_nothing_is_written(
    env: Env, tmp_path: Path
) -> None:
    new = export_sample(env, tmp_path / "2.airbundle", sequence=2)
    old = export_sample(env, tmp_path / "1.airbundle", spec="app", sequence=1)
    importing(env, new.path, tmp_path)
    layout = snapshot(tmp_path / "images")
    saved = state_file(tmp_path / "state").read_bytes()
    with pytest.raises(
        FreshnessError, match=r"sequence 1, older than the 2 already imported"
    ) as exc:
        importing(env, old.path, tmp_path)
    assert isinstance(exc.value, IntegrityError) and exc.value.exit_code == EXIT_INTEGRITY
    assert exc.value.message.endswith("a rollback")
    assert "--allow-rollback" in (exc.value.hint or "")
    assert snapshot(tmp_path / "images") == layout
    assert state_file(tmp_path / "state").read_bytes() == saved


def test_allow_rollback_imports_and_the_history_records_it(env: Env, tmp_path: Path) -> None:
    new = export_sample(env, tmp_path / "2.airbundle", sequence=2)
    old = export_sample(env, tmp_path / "1.airbundle", spec="app", sequence=1)
    importing(env, new.path, tmp_path)
    report = importing(env, old.path, tmp_path, allow_rollback=True)
    assert not report.noop and report.sequence == 1
    assert len(report.notes) == 1 and report.notes[0].startswith("ALLOWED ROLLBACK: ")
    last = state(tmp_path / "state")["history"][-1]
    assert last["action"] == "import" and last["sequence"] == 1
    assert last["notes"] == report.notes
    assert history(tmp_path / "state") == [("import", 2), ("import", 1)]
    # Going back on purpose moves the remembered sequence back too.
    assert accepted_sequences(tmp_path / "state") == {"default": 1}
    assert refs(tmp_path) == ["example.com/team/app:2.1", "registry.example.com/team/hello:0.9"]


def test_same_bundle_again_is_a_noop(env: Env, tmp_path: Path) -> None:
    bundle = export_sample(env, tmp_path / "b.airbundle", sequence=3).path
    first = importing(env, bundle, tmp_path)
    assert not first.noop and first.blobs_written > 0
    layout = snapshot(tmp_path / "images")
    channels = state(tmp_path / "state")["channels"]
    again = importing(env, bundle, tmp_path)
    assert again.noop
    assert (again.blobs_written, again.blobs_present, again.images) == (0, 0, [])
    assert snapshot(tmp_path / "images") == layout
    assert state(tmp_path / "state")["channels"] == channels
    assert history(tmp_path / "state") == [("import", 3), ("noop", 3)]


def test_two_bundles_cannot_share_a_sequence(env: Env, tmp_path: Path) -> None:
    first = export_sample(env, tmp_path / "a.airbundle", sequence=7)
    second = export_sample(env, tmp_path / "b.airbundle", spec="app", sequence=7)
    assert first.manifest_digest != second.manifest_digest
    importing(env, first.path, tmp_path)
    layout = snapshot(tmp_path / "images")
    saved = state_file(tmp_path / "state").read_bytes()
    with pytest.raises(FreshnessError, match="cannot share a sequence number") as exc:
        importing(env, second.path, tmp_path)
    assert (
        f"reuses sequence 7 on channel 'default' with different content (manifest "
        f"{second.manifest_digest}, the imported one was {first.manifest_digest})"
        in exc.value.message
    )
    assert snapshot(tmp_path / "images") == layout
    assert state_file(tmp_path / "state").read_bytes() == saved


def test_state_is_per_target(env: Env, tmp_path: Path) -> None:
    five = export_sample(env, tmp_path / "5.airbundle", sequence=5).path
    three = export_sample(env, tmp_path / "3.airbundle", sequence=3).path
    shared = tmp_path / "state"
    importing(env, five, tmp_path / "x", state_dir=shared)
    # Another layout, same state folder: its own sequence, so 3 is not a rollback there.
    assert not importing(env, three, tmp_path / "y", state_dir=shared).noop
    docs = [json.loads(p.read_text()) for p in shared.glob("target-*.json")]
    assert len(docs) == 2
    by_layout = {
        layout: [
            e["sequence"]
            for d in docs
            for e in d["channels"].values()
            if str((tmp_path / layout / "images").resolve()) in d["target"]
        ]
        for layout in "xy"
    }
    assert by_layout == {"x": [5], "y": [3]}
    with pytest.raises(FreshnessError, match="a rollback"):
        importing(env, three, tmp_path / "x", state_dir=shared)


def test_rollback_protection_does_not_depend_on_what_the_bundle_carries(
    env: Env, tmp_path: Path
) -> None:
    require_tool("git")
    new = export_sample(env, tmp_path / "10.airbundle", spec="hello-and-repo", sequence=10).path
    old = export_sample(env, tmp_path / "5.airbundle", spec="hello", sequence=5).path
    same = {"git": str(tmp_path / "git")}  # the operator runs the very same command twice
    importing(env, new, tmp_path, **same)
    with pytest.raises(FreshnessError, match="a rollback"):
        importing(env, old, tmp_path, **same)


# --- expiry -------------------------------------------------------------------------


def test_expired_bundle_is_refused_showing_the_expiry(env: Env, tmp_path: Path) -> None:
    bundle = export_sample(env, tmp_path / "b.airbundle", sequence=1, expires_in=timedelta(days=1))
    assert bundle.manifest.bundle.expires == CREATED + timedelta(days=1)
    with pytest.raises(FreshnessError) as exc:
        importing(env, bundle.path, tmp_path, at=CREATED + timedelta(days=2))
    assert exc.value.message == (
        "bundle hello (sequence 1) expired on 2024-01-02T00:00:00Z; it is now 2024-01-03T00:00:00Z"
    )
    assert "--allow-expired" in (exc.value.hint or "")
    assert snapshot(tmp_path / "images") == {}
    assert list((tmp_path / "state").glob("*.json")) == []
    # The expiry instant itself is still fine.
    assert not importing(env, bundle.path, tmp_path, at=CREATED + timedelta(days=1)).noop


def test_allow_expired_imports_and_the_history_records_it(env: Env, tmp_path: Path) -> None:
    bundle = export_sample(env, tmp_path / "b.airbundle", sequence=1, expires_in=timedelta(days=1))
    at = CREATED + timedelta(days=2)
    report = importing(env, bundle.path, tmp_path, at=at, allow_expired=True)
    assert report.notes == [
        "ALLOWED EXPIRED: bundle hello (sequence 1) expired on 2024-01-02T00:00:00Z; "
        "it is now 2024-01-03T00:00:00Z"
    ]
    entry = state(tmp_path / "state")["history"][-1]
    assert (entry["action"], entry["time"], entry["notes"]) == (
        "import",
        "2024-01-03T00:00:00Z",
        report.notes,
    )
    assert refs(tmp_path) == ["registry.example.com/team/hello:0.9"]


# --- channel ------------------------------------------------------------------------


def test_bundle_for_another_channel_is_refused_naming_both(env: Env, tmp_path: Path) -> None:
    bundle = export_sample(env, tmp_path / "b.airbundle", sequence=1, channel="prod").path
    with pytest.raises(FreshnessError) as exc:
        importing(env, bundle, tmp_path, channel="dev")
    assert "was signed for channel 'prod', this import is for channel 'dev'" in exc.value.message
    assert exc.value.hint == "import it with --channel prod if that is where it belongs"
    with pytest.raises(
        FreshnessError, match="channel 'prod', this import is for channel 'default'"
    ):
        importing(env, bundle, tmp_path)  # the default channel is "default"
    assert snapshot(tmp_path / "images") == {}
    assert list((tmp_path / "state").glob("*.json")) == []
    importing(env, bundle, tmp_path, channel="prod")
    assert accepted_sequences(tmp_path / "state") == {"prod": 1}


def test_default_channel_is_default_on_both_sides(env: Env, tmp_path: Path) -> None:
    bundle = export_sample(env, tmp_path / "b.airbundle", sequence=1)
    assert bundle.manifest.bundle.channel == "default"
    importing(env, bundle.path, tmp_path)
    assert accepted_sequences(tmp_path / "state") == {"default": 1}
    assert state(tmp_path / "state")["history"][0]["channel"] == "default"


# --- the command line ---------------------------------------------------------------


def test_cli_state_survives_processes_and_overrides_warn_loudly(env: Env, tmp_path: Path) -> None:
    new = export_sample(env, tmp_path / "2.airbundle", sequence=2, channel="prod").path
    old = export_sample(env, tmp_path / "1.airbundle", sequence=1, channel="prod").path

    first = cli_import(env, new, tmp_path, "--channel", "prod")
    assert first.returncode == EXIT_OK, first.stderr
    assert "WARNING" not in first.stderr
    assert not (tmp_path / "images" / ".airbundle").exists()  # --state-dir was used
    saved = state_file(tmp_path / "state").read_bytes()
    layout = snapshot(tmp_path / "images")

    # A later process sees sequence 2.
    refused = cli_import(env, old, tmp_path, "--channel", "prod")
    assert refused.returncode == EXIT_INTEGRITY
    message = error_of(refused)
    assert "has sequence 1, older than the 2 already imported on channel 'prod'" in message
    assert "hint: pass --allow-rollback" in message
    wrong = cli_import(env, old, tmp_path)
    assert wrong.returncode == EXIT_INTEGRITY
    assert "signed for channel 'prod', this import is for channel 'default'" in error_of(wrong)
    assert state_file(tmp_path / "state").read_bytes() == saved
    assert snapshot(tmp_path / "images") == layout

    allowed = cli_import(env, old, tmp_path, "--channel", "prod", "--allow-rollback")
    assert allowed.returncode == EXIT_OK, allowed.stderr
    assert allowed.stderr.startswith(WARNING + "ALLOWED ROLLBACK: bundle hello has sequence 1")
    assert accepted_sequences(tmp_path / "state") == {"prod": 1}


def test_cli_allow_expired_warns_loudly(env: Env, tmp_path: Path) -> None:
    bundle = export_sample(
        env, tmp_path / "b.airbundle", sequence=1, expires_in=timedelta(days=1)
    ).path
    refused = cli_import(env, bundle, tmp_path)
    assert refused.returncode == EXIT_INTEGRITY
    assert "bundle hello (sequence 1) expired on 2024-01-02T00:00:00Z; it is now " in error_of(
        refused
    )
    assert snapshot(tmp_path / "images") == {}
    allowed = cli_import(env, bundle, tmp_path, "--allow-expired")
    assert allowed.returncode == EXIT_OK, allowed.stderr
    assert allowed.stderr.startswith(WARNING + "ALLOWED EXPIRED: bundle hello (sequence 1)")
    assert state(tmp_path / "state")["history"][-1]["notes"][0].startswith("ALLOWED EXPIRED: ")


def test_corrupt_state_is_a_target_error_that_warns_against_deleting_it(
    env: Env, tmp_path: Path
) -> None:
    one = export_sample(env, tmp_path / "1.airbundle", sequence=1).path
    two = export_sample(env, tmp_path / "2.airbundle", spec="app", sequence=2).path
    importing(env, one, tmp_path)
    path = state_file(tmp_path / "state")
    path.write_bytes(path.read_bytes()[:40])  # damaged: not JSON any more
    corrupt = path.read_bytes()
    layout = snapshot(tmp_path / "images")
    with pytest.raises(StateError, match=r"import state .*\.json is not valid JSON") as exc:
        importing(env, two, tmp_path)
    assert exc.value.hint == "restore it from backup; deleting it forgets rollback protection"
    proc = cli_import(env, two, tmp_path)
    assert proc.returncode == EXIT_IO
    assert "hint: restore it from backup; deleting it forgets rollback protection" in error_of(proc)
    assert path.read_bytes() == corrupt
    assert snapshot(tmp_path / "images") == layout


def test_concurrent_imports_into_one_target_lose_no_update(env: Env, tmp_path: Path) -> None:
    ten = export_sample(env, tmp_path / "10.airbundle", sequence=10).path
    eleven = export_sample(env, tmp_path / "11.airbundle", spec="app", sequence=11).path
    for attempt in range(3):
        target = tmp_path / f"t{attempt}"
        procs = {
            seq: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "airbundle",
                    "import",
                    str(bundle),
                    "--trust",
                    str(env.a.public),
                    "--registry",
                    f"oci:{target / 'images'}",
                    "--state-dir",
                    str(target / "state"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=cli_env(),
            )
            for seq, bundle in ((10, ten), (11, eleven))
        }
        outcome = {
            seq: (p.communicate(timeout=60)[1], p.returncode)[::-1] for seq, p in procs.items()
        }
        assert outcome[11][0] == EXIT_OK, outcome[11][1]
        state_dir = target / "state"
        assert accepted_sequences(state_dir) == {"default": 11}
        if outcome[10][0] == EXIT_OK:  # 10 landed first
            assert history(state_dir) == [("import", 10), ("import", 11)]
            expected = ["example.com/team/app:2.1", "registry.example.com/team/hello:0.9"]
        else:  # 11 landed first: 10 is a rollback, and nothing of it was written
            assert outcome[10][0] == EXIT_INTEGRITY
            assert "has sequence 10, older than the 11 already imported" in outcome[10][1]
            assert history(state_dir) == [("import", 11)]
            expected = ["example.com/team/app:2.1"]
        assert refs(target) == expected  # index.json is valid JSON with every landed tag


# --- inspect ------------------------------------------------------------------------


def test_inspect_shows_an_expired_bundle_without_judging_it(env: Env, tmp_path: Path) -> None:
    bundle = export_sample(
        env, tmp_path / "b.airbundle", sequence=4, channel="prod", expires_in=timedelta(days=1)
    ).path
    assert inspect_bundle(bundle).manifest.bundle.expires == CREATED + timedelta(days=1)
    text = cli("inspect", bundle)
    assert text.returncode == EXIT_OK, text.stderr
    assert "channel   prod  sequence 4  expires 2024-01-02T00:00:00Z" in text.stdout.splitlines()
    doc = cli("inspect", bundle, "--json")
    assert doc.returncode == EXIT_OK, doc.stderr
    assert json.loads(doc.stdout)["bundle"]["expires"] == "2024-01-02T00:00:00Z"


# --- co-signing -----------------------------------------------------------------------


def regions(data: bytes) -> tuple[bytes, bytes]:
    """(header, content): everything but the prefix region."""
    start = archive.HEADER_SIZE + archive.parse_file_header(data, source="test")
    return data[: archive.HEADER_SIZE], data[start:]


def test_sign_adds_a_cosignature_and_touches_only_the_prefix(env: Env, tmp_path: Path) -> None:
    bundle = export_sample(env, tmp_path / "b.airbundle", sequence=1).path
    before = bundle.read_bytes()
    trust = ["--trust", env.a.public, "--trust", env.b.public, "--threshold", "2"]

    short = cli("verify", bundle, *trust)
    assert short.returncode == EXIT_INTEGRITY
    assert "bundle has 1 trusted signature(s) of 2 required" in error_of(short)

    signed = cli("sign", bundle, "--key", env.b.private)
    assert signed.returncode == EXIT_OK, signed.stderr
    fingerprint = sshsig.public_key_of(env.key_b).fingerprint
    assert signed.stdout == f"signed {bundle} as {fingerprint}; 2 signature(s) now\n"
    after = bundle.read_bytes()
    assert len(after) == len(before) and after != before
    assert regions(after) == regions(before)
    assert after[:32] == before[:32]  # magic, id, version, flags, prefix length
    assert not journal_path(bundle).exists()

    ok = cli("verify", bundle, *trust)
    assert ok.returncode == EXIT_OK, ok.stderr

    for pair, key in ((env.b, env.key_b), (env.a, env.key_a)):
        again = cli("sign", bundle, "--key", pair.private)
        assert again.returncode == EXIT_OK, again.stderr
        fp = sshsig.public_key_of(key).fingerprint
        assert again.stdout == f"{bundle} is already signed by {fp}; nothing to do\n"
        assert bundle.read_bytes() == after


def test_ssh_keygen_accepts_both_signatures(env: Env, tmp_path: Path) -> None:
    require_tool("ssh-keygen")
    require_tool("zstd")
    bundle = export_sample(env, tmp_path / "b.airbundle", sequence=1).path
    assert sign_bundle(bundle, env.key_b).added
    out = tmp_path / "x"
    out.mkdir()
    run("tar", "--zstd", "-xf", bundle, "-C", out)
    sigs = sorted((out / "airbundle" / "signatures").iterdir())
    assert [p.name for p in sigs] == ["00.sig", "01.sig"]
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(
        f'a@test namespaces="airbundle" {env.a.public.read_text().strip()}\n'
        f'b@test namespaces="airbundle" {env.b.public.read_text().strip()}\n'
    )
    manifest = (out / "airbundle" / "manifest.json").read_bytes()
    for principal, sig in zip(("a@test", "b@test"), sigs, strict=True):
        said = run(
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            allowed,
            "-I",
            principal,
            "-n",
            "airbundle",
            "-s",
            sig,
            stdin=manifest,
        )
        assert f'Good "airbundle" signature for {principal}' in said
    # The same allowed_signers file meets a threshold of 2 in airbundle.
    result = verify_bundle(bundle, trust_policy(allowed, threshold=2))
    assert len(result.authenticated.signers) == 2


def test_one_key_never_counts_twice(env: Env, tmp_path: Path) -> None:
    bundle = export_sample(env, tmp_path / "b.airbundle", sequence=1).path
    twice = cli(
        "verify", bundle, "--trust", env.a.public, "--trust", env.a.public, "--threshold", "2"
    )
    assert twice.returncode == EXIT_USAGE
    assert "signature threshold 2 can never be met: the trust set has 1 distinct key(s)" in (
        error_of(twice)
    )
    # A copied signature does not stand in for a second signer either.
    with bundle.open("r+b") as fh:
        prefix = archive.read_prefix_region(fh, source=str(bundle))
        sig = prefix.signatures[0][1]
        archive.rewrite_prefix(fh, prefix.manifest, [sig, sig], mtime=EPOCH, source=str(bundle))
    with pytest.raises(SignatureError, match=r"1 trusted signature\(s\) of 2 required") as exc:
        verify_bundle(bundle, trust_policy(env.a.public, env.b.public, threshold=2))
    assert "same key as another signature: counted once" in exc.value.message
    assert verify_bundle(bundle, trust_policy(env.a.public)).members > 0


def test_interrupted_sign_is_undone_by_the_next_sign(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = export_sample(env, tmp_path / "b.airbundle", sequence=1).path
    data = bundle.read_bytes()

    # b's sign stopped after 64 bytes of the new prefix region: the bundle is torn.
    interrupted_sign(bundle, env.key_b, 64, monkeypatch)
    assert journal_path(bundle).exists()
    with pytest.raises(IntegrityError):  # the torn prefix region
        verify_bundle(bundle, trust_policy(env.a.public))
    proc = cli("verify", bundle, "--trust", env.a.public)
    assert proc.returncode == EXIT_INTEGRITY
    assert "only `airbundle sign` with that key can use it" in proc.stderr

    # Another key may not use b's journal: refused, nothing written.
    proc = cli("sign", bundle, "--key", env.a.private)
    assert proc.returncode == EXIT_INTEGRITY
    assert "was written by" in proc.stderr and journal_path(bundle).exists()

    # b again, through the CLI: the saved region is put back, then b co-signs.
    proc = cli("sign", bundle, "--key", env.b.private)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "2 signature(s) now" in proc.stdout
    assert not journal_path(bundle).exists()
    assert regions(bundle.read_bytes()) == regions(data)
    verify_bundle(bundle, trust_policy(env.a.public, env.b.public, threshold=2))


# --- key rotation ---------------------------------------------------------------------

BEFORE = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
ROTATION = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
AFTER = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)


def test_key_rotation_with_allowed_signers_validity_windows(env: Env, tmp_path: Path) -> None:
    """How an operator rotates the release key (old: a, new: b) on 2026-12-01:

    1. On the connected side, `airbundle key generate keys/release-2026`.
    2. Carry the new public key to every receiving site by a channel other than a
       bundle, and edit the site's allowed_signers file (the one given to
       `--trust`): end the old key with `valid-before="20261201"` and add the new
       one with `valid-after="20261201"`. airbundle reads these dates as UTC
       (write a trailing Z to make ssh-keygen, which uses local time, agree); both
       ends are inclusive, so at exactly the rotation instant both keys count.
    3. Export with the old key before the date and with the new key after it.
       Bundles that travel across the date are co-signed with both
       (`airbundle sign BUNDLE --key keys/release-2026`), so they verify on
       either side of it.
    4. Validity is judged at verification time (an SSHSIG carries no signing
       time): after the date, bundles signed only by the old key stop verifying,
       even ones already on the way; re-sign them with the new key.
    5. Later, delete the old key's line.
    """
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(
        f'release-2025 valid-before="20261201" {env.a.public.read_text().strip()}\n'
        f'release-2026 valid-after="20261201" {env.b.public.read_text().strip()}\n'
    )
    trust = trust_policy(allowed)
    old = export_sample(env, tmp_path / "old.airbundle", sequence=1).path
    new = export_sample(env, tmp_path / "new.airbundle", sequence=2, keys=(env.key_b,)).path
    both = export_sample(env, tmp_path / "both.airbundle", sequence=3).path
    sign_bundle(both, env.key_b)

    def signers(bundle: Path, at: datetime) -> list[str]:
        auth = verify_bundle(bundle, trust, at=at).authenticated
        return sorted(s.source.rsplit(":", 1)[1] for s in auth.signers)  # allowed_signers line

    assert signers(old, BEFORE) == ["1"]
    with pytest.raises(SignatureError, match=r"0 trusted signature\(s\) of 1 required") as exc:
        verify_bundle(old, trust, at=AFTER)
    assert f"(expired at 2026-12-01T00:00:00+00:00 by {allowed}:1)" in exc.value.message

    with pytest.raises(SignatureError, match=r"0 trusted signature\(s\) of 1 required") as exc:
        verify_bundle(new, trust, at=BEFORE)
    assert f"(not valid until 2026-12-01T00:00:00+00:00 by {allowed}:2)" in exc.value.message
    assert signers(new, AFTER) == ["2"]

    assert signers(old, ROTATION) == ["1"] and signers(new, ROTATION) == ["2"]
    assert signers(both, BEFORE) == ["1"] and signers(both, AFTER) == ["2"]

    # import judges the key at the same `at`: nothing lands from the expired key.
    with pytest.raises(SignatureError, match="expired at 2026-12-01"):
        import_(
            old,
            trust,
            registry=f"oci:{tmp_path / 'images'}",
            state_dir=tmp_path / "state",
            at=AFTER,
        )
    assert snapshot(tmp_path / "images") == {} and snapshot(tmp_path / "state") == {}

    # ssh-keygen, given the same file and the same time, agrees.
    require_tool("ssh-keygen")
    require_tool("zstd")
    for name, bundle, principal, good_at, bad_at in (
        ("old", old, "release-2025", "20261115", "20261215"),
        ("new", new, "release-2026", "20261215", "20261115"),
    ):
        out = tmp_path / name
        out.mkdir()
        run("tar", "--zstd", "-xf", bundle, "-C", out, "airbundle")
        manifest = (out / "airbundle" / "manifest.json").read_bytes()
        base = [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            allowed,
            "-I",
            principal,
            "-n",
            "airbundle",
            "-s",
            out / "airbundle" / "signatures" / "00.sig",
        ]
        assert "Good" in run(*base, "-O", f"verify-time={good_at}", stdin=manifest)
        proc = subprocess.run(
            [str(a) for a in base] + ["-O", f"verify-time={bad_at}"],
            input=manifest,
            capture_output=True,
            check=False,
        )
        assert proc.returncode != 0, proc.stdout


def test_sign_refuses_a_header_whose_prefix_length_was_altered(tmp_path: Path) -> None:
    """The prefix length is not covered by signatures: sign checks it before
    rewriting anything in place."""
    import shutil as _shutil

    from airbundle.format.archive import HEADER_SIZE
    from airbundle.ops.keys import load_signing_key
    from airbundle.ops.sign import sign_bundle
    from support.env import REPO_ROOT
    from support.keys import make_key

    tree = tmp_path / "s"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "samples" / "make_samples.py"), "--out", str(tree)],
        check=True,
        capture_output=True,
    )
    _shutil.copy(REPO_ROOT / "samples" / "spec.yaml", tree / "spec.yaml")
    key = make_key(tmp_path, "a")
    bundle = tmp_path / "b.airbundle"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "airbundle",
            "export",
            str(tree / "spec.yaml"),
            "-o",
            str(bundle),
            "--key",
            str(key.private),
            "-q",
            "--no-cache",
        ],
        check=True,
    )
    data = bytearray(bundle.read_bytes())
    length = int.from_bytes(data[24:32], "little")
    data[24:32] = (length - 16).to_bytes(8, "little")
    bundle.write_bytes(bytes(data))
    before = bundle.read_bytes()
    other = make_key(tmp_path, "b")
    with pytest.raises(ArchiveError, match="prefix"):
        sign_bundle(bundle, load_signing_key(other.private, passphrase=None))
    assert bundle.read_bytes() == before
    assert HEADER_SIZE == 40
