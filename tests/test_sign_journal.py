"""The sign journal (issue 11, item 1): recovery never writes bytes the signer did
not write first. A journal must be signed by the key of the `sign` that uses it,
belong to this very bundle file, keep the manifest and add one signature, and
describe the torn region as it is; one on read-only media is never used; and
`verify` never suggests `sign` for a journal `sign` would refuse."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.errors import EXIT_INTEGRITY, EXIT_OK, ArchiveError, SignatureError
from airbundle.format import journal
from airbundle.format.archive import HEADER_SIZE, encode_prefix, read_prefix_region
from airbundle.format.sshsig import public_key_of
from airbundle.ops.keys import generate_key, load_trust
from airbundle.ops.sign import journal_hint, journal_path, recover_journal, sign_bundle
from airbundle.ops.verify import load_policy, verify_bundle
from support.cli import run
from support.crafting import EPOCH, World, content_start, interrupted_sign, world
from support.env import AIRBUNDLE, require_tool

REPAIR = "only `airbundle sign` with that key can use it"
UNUSABLE = "cannot be used"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("attacker") / "key"
    generate_key(path, passphrase=None, comment="attacker")
    return path


def split(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(header, prefix region, content)."""
    start = content_start(data)
    return data[:HEADER_SIZE], data[HEADER_SIZE:start], data[start:]


def torn(env: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: int = 64) -> Path:
    """A copy of the session bundle whose co-signing by the reviewer (the
    session's other key) stopped after `written` bytes of the new region."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    bundle = env.copy_bundle(tmp_path)
    bundle.chmod(0o644)
    interrupted_sign(bundle, env.other_key, written, monkeypatch)
    return bundle


def both(env: World) -> list[object]:
    return ["--trust", env.pub_path, "--trust", env.other_pub_path, "--threshold", "2"]


# --- what an interrupted sign leaves is repaired by the same key ------------------------


@pytest.mark.parametrize("written", [0, 64, 700, -1], ids=["none", "64", "700", "all"])
def test_the_same_key_repairs_an_interrupted_sign_and_signs(
    env: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: int
) -> None:
    pristine = env.bundle.read_bytes()
    bundle = env.copy_bundle(tmp_path)
    bundle.chmod(0o644)
    new = interrupted_sign(bundle, env.other_key, 10**9 if written < 0 else written, monkeypatch)
    assert journal_path(bundle).exists()
    if 0 < written < len(new):
        assert split(bundle.read_bytes())[1] != split(pristine)[1]
        proc = run("verify", bundle, "--trust", env.pub_path)
        assert proc.returncode == EXIT_INTEGRITY
        assert REPAIR in proc.stderr and "SHA256:" in proc.stderr
    proc = run("sign", bundle, "--key", env.other_key_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert not journal_path(bundle).exists()
    header, _, content = split(bundle.read_bytes())
    assert (header, content) == (split(pristine)[0], split(pristine)[2])
    assert run("verify", bundle, *both(env)).returncode == EXIT_OK


def test_recovery_writes_only_the_prefix_region(
    env: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = torn(env, tmp_path, monkeypatch)
    before = bundle.read_bytes()
    assert recover_journal(bundle, env.other_key)
    after = bundle.read_bytes()
    assert len(after) == len(before)
    assert split(after)[0] == split(before)[0] and split(after)[2] == split(before)[2]
    assert split(after)[1] == split(env.bundle.read_bytes())[1]


# --- journals that are refused: nothing written, and verify does not suggest sign ------


def refused_everywhere(env: World, bundle: Path, key_path: Path, *fragments: str) -> None:
    """verify names the journal as unusable (no suggestion to sign); sign refuses
    with exit 1; the bundle and the journal are unchanged."""
    before = bundle.read_bytes()
    proc = run("verify", bundle, "--trust", env.pub_path)
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert UNUSABLE in proc.stderr and REPAIR not in proc.stderr, proc.stderr
    proc = run("sign", bundle, "--key", key_path)
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    assert bundle.read_bytes() == before


def damaged(env: World, tmp_path: Path) -> Path:
    """The session bundle with its prefix region overwritten in the middle."""
    data = bytearray(env.bundle.read_bytes())
    data[HEADER_SIZE + 64 : HEADER_SIZE + 128] = b"\x5a" * 64
    bundle = tmp_path / "b.airbundle"
    bundle.write_bytes(bytes(data))
    return bundle


def test_a_raw_region_journal_is_refused(env: World, tmp_path: Path) -> None:
    """The reported attack: a journal holding another bundle's header and prefix
    (the old journal format, which `sign` wrote back unchecked)."""
    bundle = damaged(env, tmp_path)
    other = split(env.bundle.read_bytes())
    journal_path(bundle).write_bytes(other[0] + other[1])
    refused_everywhere(env, bundle, env.other_key_path, "is not an airbundle sign journal")


def test_a_journal_holding_a_whole_other_bundle_is_refused(env: World, tmp_path: Path) -> None:
    bundle = damaged(env, tmp_path)
    journal_path(bundle).write_bytes(env.bundle.read_bytes() + b"\0" * 4096)
    refused_everywhere(env, bundle, env.other_key_path, "is not an airbundle sign journal")


def _forged(env: World, bundle: Path, key: Ed25519PrivateKey) -> None:
    """A well-formed journal for `bundle` (a copy of the session bundle), signed
    by `key`, and the bundle's region torn between its two regions."""
    data = env.bundle.read_bytes()
    header, region, content = split(data)
    prefix = read_prefix_region(io.BytesIO(data), source="t")
    sigs = [sig for _, sig in prefix.signatures]
    signed = prefix.manifest
    old = encode_prefix(signed, sigs, capacity=len(region), mtime=EPOCH)
    extra = b"-----BEGIN SSH SIGNATURE-----\nx\n-----END SSH SIGNATURE-----\n"
    new = encode_prefix(signed, [*sigs, extra], capacity=len(region), mtime=EPOCH)
    binding = journal.Binding(
        bundle.name,
        len(data),
        journal.sha256_hex(header),
        len(region),
        journal.sha256_hex(content[: journal.CONTENT_PROBE]),
        min(len(content), journal.CONTENT_PROBE),
    )
    journal_path(bundle).write_bytes(journal.encode(binding, signed, old, new, key))
    # The region as a cut write of `new` over `old` would leave it.
    torn_region = new[:64] + old[64:]
    bundle.write_bytes(header + torn_region + content)


def test_a_journal_signed_by_another_key_is_refused(
    env: World, tmp_path: Path, attacker: Path
) -> None:
    from airbundle.ops.keys import load_signing_key

    bundle = tmp_path / "b.airbundle"
    key = load_signing_key(attacker, passphrase=None)
    _forged(env, bundle, key)
    before = bundle.read_bytes()
    # verify names the key that alone could use it; it suggests nothing else.
    proc = run("verify", bundle, "--trust", env.pub_path)
    assert proc.returncode == EXIT_INTEGRITY
    assert f"{REPAIR}" in proc.stderr and public_key_of(key).fingerprint in proc.stderr
    proc = run("sign", bundle, "--key", env.other_key_path)
    assert proc.returncode == EXIT_INTEGRITY and "Traceback" not in proc.stderr
    assert "was written by" in proc.stderr and "not by this key" in proc.stderr
    assert bundle.read_bytes() == before


def test_a_journal_that_would_change_the_manifest_is_refused(env: World, tmp_path: Path) -> None:
    """Even signed by the reviewer's own key: the saved region's manifest is not
    the one the new region holds."""
    bundle = tmp_path / "b.airbundle"
    data = env.bundle.read_bytes()
    header, region, content = split(data)
    prefix = read_prefix_region(io.BytesIO(data), source="t")
    sigs = [sig for _, sig in prefix.signatures]
    other_manifest = prefix.manifest + b" "  # one byte more: another manifest
    old = encode_prefix(other_manifest, sigs, capacity=len(region), mtime=EPOCH)
    new = encode_prefix(prefix.manifest, [*sigs, sigs[0]], capacity=len(region), mtime=EPOCH)
    binding = journal.Binding(
        bundle.name,
        len(data),
        journal.sha256_hex(header),
        len(region),
        journal.sha256_hex(content[: journal.CONTENT_PROBE]),
        min(len(content), journal.CONTENT_PROBE),
    )
    journal_path(bundle).write_bytes(
        journal.encode(binding, prefix.manifest, old, new, env.other_key)
    )
    bundle.write_bytes(header + new[:64] + old[64:] + content)
    refused_everywhere(env, bundle, env.other_key_path, "would change the manifest")


def test_a_journal_of_another_bundle_is_refused(
    env: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's own genuine journal, carried beside another bundle."""
    first = torn(env, tmp_path / "one", monkeypatch)
    second = damaged(env, tmp_path)
    data = bytearray(second.read_bytes())
    data[-200] ^= 1  # another bundle: same size, other content
    second.write_bytes(bytes(data))
    shutil.copyfile(journal_path(first), journal_path(second))
    refused_everywhere(env, second, env.other_key_path, "belongs to another bundle")


def test_a_journal_whose_bundle_header_changed_is_refused(
    env: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unsigned prefix-length field changed after the crash: recovery would
    write at the wrong place; refused."""
    bundle = torn(env, tmp_path, monkeypatch)
    data = bytearray(bundle.read_bytes())
    data[24] ^= 0x01  # low byte of the prefix length
    bundle.write_bytes(bytes(data))
    before = bundle.read_bytes()
    proc = run("sign", bundle, "--key", env.other_key_path)
    assert proc.returncode == EXIT_INTEGRITY and "Traceback" not in proc.stderr
    assert bundle.read_bytes() == before


def test_a_region_that_is_not_a_torn_write_is_refused(
    env: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = torn(env, tmp_path, monkeypatch)
    data = bytearray(bundle.read_bytes())
    data[HEADER_SIZE + 300 : HEADER_SIZE + 340] = os.urandom(40)
    bundle.write_bytes(bytes(data))
    refused_everywhere(env, bundle, env.other_key_path, "not what an interrupted `sign` leaves")


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_a_journal_that_is_a_fifo_or_huge_is_refused(
    env: World, tmp_path: Path, kind: str
) -> None:
    bundle = damaged(env, tmp_path)
    path = journal_path(bundle)
    if kind == "fifo":
        os.mkfifo(path)
        expected = "is a FIFO"
    else:
        with path.open("wb") as fh:
            fh.truncate(1 << 30)
        expected = "more than the"
    refused_everywhere(env, bundle, env.other_key_path, expected)


def test_a_journal_on_read_only_media_is_never_used(
    env: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A genuine journal, but the media is mounted read-only (a bind mount in a
    user and mount namespace): `sign` did not run there; nothing suggests it."""
    unshare = require_tool("unshare")
    media = tmp_path / "media"
    bundle = torn(env, media, monkeypatch)
    script = (
        'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    )

    def on_read_only(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, "ro",
             str(media), *AIRBUNDLE, *map(str, args)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    before = bundle.read_bytes()
    proc = on_read_only("verify", bundle, "--trust", env.pub_path)
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert "read-only media" in proc.stderr and REPAIR not in proc.stderr
    proc = on_read_only("sign", bundle, "--key", env.other_key_path)
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert "read-only media" in proc.stderr
    assert bundle.read_bytes() == before and journal_path(bundle).exists()


def test_the_hint_for_each_journal(
    env: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert journal_hint(env.bundle) is None
    genuine = torn(env, tmp_path / "a", monkeypatch)
    assert REPAIR in (journal_hint(genuine) or "")
    bad = damaged(env, tmp_path)
    journal_path(bad).write_bytes(b"junk")
    hint = journal_hint(bad) or ""
    assert UNUSABLE in hint and REPAIR not in hint


def test_a_library_caller_gets_a_signature_error(
    env: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = torn(env, tmp_path, monkeypatch)
    with pytest.raises(SignatureError, match=r"was written by .* not by this key"):
        sign_bundle(bundle, env.key)
    policy = load_policy(load_trust([env.pub_path]), 1)
    with pytest.raises(ArchiveError, match="corrupt"):
        verify_bundle(bundle, policy)
