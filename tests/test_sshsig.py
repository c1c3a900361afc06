"""SSHSIG signatures and trust files, checked against the real ssh-keygen."""

from __future__ import annotations

import base64
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from airbundle.errors import KeyFileError, SignatureError, UsageError
from airbundle.format import sshsig
from airbundle.format.sshsig import (
    NAMESPACE,
    PublicKey,
    Signature,
    load_private_key,
    parse_signature,
    public_key_of,
    serialize_private_key,
    sign,
    verify,
)
from airbundle.format.trust import TrustedKey, TrustPolicy, parse_trust_file
from support.env import require_tool

DATA = b"airbundle manifest\x00\xff bytes\n"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def ssh_keygen() -> str:
    return require_tool("ssh-keygen")


def keygen(ssh_keygen: str, path: Path, *args: str, passphrase: str = "") -> Path:
    subprocess.run(
        [ssh_keygen, "-q", "-N", passphrase, "-C", "test@example", "-f", str(path), *args],
        check=True,
        capture_output=True,
    )
    return path


def fingerprint_by_ssh_keygen(ssh_keygen: str, pub: Path) -> str:
    out = subprocess.run(
        [ssh_keygen, "-lf", str(pub)], check=True, capture_output=True, text=True
    ).stdout
    return out.split()[1]


def read_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    return load_private_key(path.read_bytes(), passphrase=passphrase, source=str(path))


def fresh_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def trusted(key: Ed25519PrivateKey, source: str = "test") -> TrustedKey:
    return TrustedKey(public_key_of(key), ("*",), None, None, None, source)


# --- sign / verify ----------------------------------------------------------


def test_round_trip_returns_signer() -> None:
    key = fresh_key()
    armored = sign(DATA, key)
    assert armored.startswith(b"-----BEGIN SSH SIGNATURE-----\n")
    assert armored.endswith(b"\n-----END SSH SIGNATURE-----\n")
    assert all(len(line) <= 70 for line in armored.splitlines())
    assert verify(DATA, armored) == public_key_of(key)


@pytest.mark.parametrize("hash_algorithm", ["sha256", "sha512"])
def test_round_trip_both_hashes(hash_algorithm: str) -> None:
    key = fresh_key()
    armored = sign(DATA, key, hash_algorithm=hash_algorithm)
    assert parse_signature(armored).hash_algorithm == hash_algorithm
    assert verify(DATA, armored) == public_key_of(key)


def test_sign_rejects_unsupported_hash_and_empty_namespace() -> None:
    with pytest.raises(UsageError, match="md5"):
        sign(DATA, fresh_key(), hash_algorithm="md5")
    with pytest.raises(UsageError, match="namespace"):
        sign(DATA, fresh_key(), namespace="")


def test_tampered_data_fails() -> None:
    armored = sign(DATA, fresh_key())
    with pytest.raises(SignatureError, match="does not match"):
        verify(DATA + b"x", armored)


def test_tampered_signature_bytes_fail() -> None:
    key = fresh_key()
    sig = parse_signature(sign(DATA, key))
    flipped = bytes([sig.signature[0] ^ 1]) + sig.signature[1:]
    armored = _armor(_sshsig_blob(public_key_of(key).wire_blob, signature=flipped))
    with pytest.raises(SignatureError, match="does not match"):
        verify(DATA, armored)


def test_signer_key_swapped_fails() -> None:
    # Replacing the embedded key with another one must not verify.
    sig = parse_signature(sign(DATA, fresh_key()))
    other = public_key_of(fresh_key())
    armored = _armor(_sshsig_blob(other.wire_blob, signature=sig.signature))
    with pytest.raises(SignatureError):
        verify(DATA, armored)


def test_wrong_namespace_names_both() -> None:
    armored = sign(DATA, fresh_key(), namespace="git")
    with pytest.raises(SignatureError, match=r"'git'.*'airbundle'"):
        verify(DATA, armored)
    assert verify(DATA, armored, namespace="git")


@pytest.mark.parametrize(
    ("armored", "message"),
    [
        (b"", "not SSHSIG armored"),
        (b"garbage", "not SSHSIG armored"),
        (b"\xff\xfe", "not SSHSIG armored"),
        (b"-----BEGIN SSH SIGNATURE-----\n-----END SSH SIGNATURE-----\n", "not SSHSIG armored"),
        (b"-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----\n", "base64"),
        (b"-----BEGIN SSH SIGNATURE-----\nAAA\n-----END SSH SIGNATURE-----\n", "base64"),
        (b"-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n", "magic"),
        (b"-----BEGIN PGP SIGNATURE-----\nAAAA\n-----END PGP SIGNATURE-----\n", "armored"),
    ],
)
def test_garbage_rejected(armored: bytes, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        parse_signature(armored)


def test_doubled_armor_rejected() -> None:
    armored = sign(DATA, fresh_key())
    with pytest.raises(SignatureError, match="more than one"):
        parse_signature(armored + armored)
    with pytest.raises(SignatureError):
        verify(DATA, armored + b"trailing text\n")


def test_oversized_signature_rejected_before_decoding() -> None:
    armored = sign(DATA, fresh_key())
    padded = armored + b"\n" * (16 * 1024)
    with pytest.raises(SignatureError, match="bytes"):
        parse_signature(padded)


def test_crlf_armor_accepted() -> None:
    key = fresh_key()
    armored = sign(DATA, key).replace(b"\n", b"\r\n")
    assert verify(DATA, armored) == public_key_of(key)


def _sshsig_blob(
    key_blob: bytes,
    *,
    magic: bytes = b"SSHSIG",
    version: int = 1,
    namespace: bytes = b"airbundle",
    hash_algorithm: bytes = b"sha512",
    sig_type: bytes = b"ssh-ed25519",
    signature: bytes = b"\x00" * 64,
    trailing: bytes = b"",
) -> bytes:
    def s(value: bytes) -> bytes:
        return struct.pack(">I", len(value)) + value

    return (
        magic
        + struct.pack(">I", version)
        + s(key_blob)
        + s(namespace)
        + s(b"")
        + s(hash_algorithm)
        + s(s(sig_type) + s(signature))
        + trailing
    )


def _armor(blob: bytes) -> bytes:
    text = base64.b64encode(blob).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return (
        "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n"
    ).encode()


def _rsa_key_blob() -> bytes:
    def s(value: bytes) -> bytes:
        return struct.pack(">I", len(value)) + value

    return s(b"ssh-rsa") + s(b"\x01\x00\x01") + s(b"\x00" + b"\xab" * 256)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"magic": b"SSHSIH"}, "magic"),
        ({"version": 2}, "version 2"),
        ({"hash_algorithm": b"sha1"}, "unsupported hash 'sha1'"),
        ({"sig_type": b"rsa-sha2-512"}, "unsupported algorithm rsa-sha2-512"),
        ({"signature": b"\x00" * 63}, "63 bytes"),
        ({"namespace": b""}, "empty namespace"),
        ({"namespace": b"\xff"}, "UTF-8"),
        ({"trailing": b"\x00"}, "trailing"),
    ],
)
def test_strict_fields(change: dict[str, object], message: str) -> None:
    key_blob = public_key_of(fresh_key()).wire_blob
    blob = _sshsig_blob(key_blob, **change)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match=message):
        parse_signature(_armor(blob))


def test_rsa_signature_key_rejected() -> None:
    with pytest.raises(SignatureError, match="unsupported key type ssh-rsa; airbundle accepts"):
        parse_signature(_armor(_sshsig_blob(_rsa_key_blob())))


def test_truncated_blob_rejected() -> None:
    blob = _sshsig_blob(public_key_of(fresh_key()).wire_blob)
    for cut in (7, 20, len(blob) - 1):
        with pytest.raises(SignatureError, match="malformed"):
            parse_signature(_armor(blob[:cut]))


def test_signature_by_untrusted_key_fails_trust_check() -> None:
    alice, mallory = fresh_key(), fresh_key()
    signer = verify(DATA, sign(DATA, mallory))
    policy = TrustPolicy((trusted(alice),))
    with pytest.raises(SignatureError, match=r"0 trusted signature\(s\) of 1.*not in trust set"):
        policy.check([("signatures/m.sig", signer)], namespace=NAMESPACE, at=NOW)


# --- ssh-keygen interop -----------------------------------------------------


def test_ssh_keygen_verifies_our_signature(tmp_path: Path, ssh_keygen: str) -> None:
    k = keygen(ssh_keygen, tmp_path / "k", "-t", "ed25519")
    data = tmp_path / "data"
    data.write_bytes(DATA)
    sig = tmp_path / "data.sig"
    sig.write_bytes(sign(DATA, read_key(k)))
    allowed = tmp_path / "allowed_signers"
    pub = (tmp_path / "k.pub").read_text().strip()
    allowed.write_text(f'id namespaces="{NAMESPACE}" {pub}\n')
    result = subprocess.run(
        [ssh_keygen, "-Y", "verify", "-n", NAMESPACE, "-f", str(allowed), "-I", "id", "-s", sig],
        input=DATA,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()
    tampered = subprocess.run(
        [ssh_keygen, "-Y", "verify", "-n", NAMESPACE, "-f", str(allowed), "-I", "id", "-s", sig],
        input=DATA + b"!",
        capture_output=True,
    )
    assert tampered.returncode != 0


@pytest.mark.parametrize("hash_algorithm", ["sha256", "sha512"])
def test_we_verify_ssh_keygen_signature_byte_identical(
    tmp_path: Path, ssh_keygen: str, hash_algorithm: str
) -> None:
    k = keygen(ssh_keygen, tmp_path / "k", "-t", "ed25519")
    data = tmp_path / "data"
    data.write_bytes(DATA)
    subprocess.run(
        [
            ssh_keygen,
            "-Y",
            "sign",
            "-n",
            NAMESPACE,
            "-f",
            k,
            "-O",
            f"hashalg={hash_algorithm}",
            data,
        ],
        check=True,
        capture_output=True,
    )
    theirs = (tmp_path / "data.sig").read_bytes()
    signer = verify(DATA, theirs)
    assert signer.fingerprint == fingerprint_by_ssh_keygen(ssh_keygen, tmp_path / "k.pub")
    # Ed25519 is deterministic, so the whole armored file must match.
    assert sign(DATA, read_key(k), hash_algorithm=hash_algorithm) == theirs


def test_public_key_line_matches_ssh_keygen(tmp_path: Path, ssh_keygen: str) -> None:
    k = keygen(ssh_keygen, tmp_path / "k", "-t", "ed25519")
    line = (tmp_path / "k.pub").read_text().strip()
    parsed = PublicKey.parse_openssh(line)
    assert parsed.openssh_line() == line
    assert parsed.comment == "test@example"
    assert public_key_of(read_key(k), "test@example").openssh_line() == line
    assert parsed.fingerprint == fingerprint_by_ssh_keygen(ssh_keygen, tmp_path / "k.pub")
    # Comments do not take part in identity.
    assert parsed == PublicKey(parsed.raw, "someone else")
    assert hash(parsed) == hash(PublicKey(parsed.raw))


def test_encrypted_key_written_by_us_reads_in_ssh_keygen(tmp_path: Path, ssh_keygen: str) -> None:
    key = fresh_key()
    path = tmp_path / "enc"
    path.write_bytes(serialize_private_key(key, passphrase=b"pw"))
    path.chmod(0o600)
    out = subprocess.run(
        [ssh_keygen, "-y", "-P", "pw", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout
    assert PublicKey.parse_openssh(out) == public_key_of(key)
    assert public_key_of(read_key(path, b"pw")) == public_key_of(key)
    with pytest.raises(KeyFileError, match=rf"wrong passphrase for {path}"):
        read_key(path, b"not-pw")
    with pytest.raises(KeyFileError, match=rf"{path} is encrypted and a passphrase is needed"):
        read_key(path)


def test_unencrypted_round_trip_ignores_passphrase() -> None:
    key = fresh_key()
    data = serialize_private_key(key, passphrase=None)
    assert b"BEGIN OPENSSH PRIVATE KEY" in data
    loaded = load_private_key(data, passphrase=b"unused", source="k")
    assert public_key_of(loaded) == public_key_of(key)


def test_ssh_keygen_encrypted_key_loads(tmp_path: Path, ssh_keygen: str) -> None:
    k = keygen(ssh_keygen, tmp_path / "k", "-t", "ed25519", passphrase="secret")
    key = read_key(k, b"secret")
    assert public_key_of(key) == PublicKey.parse_openssh((tmp_path / "k.pub").read_text())
    with pytest.raises(KeyFileError, match=rf"wrong passphrase for {k}"):
        read_key(k, b"wrong")
    with pytest.raises(KeyFileError, match="passphrase is needed"):
        read_key(k)


def test_rsa_key_rejected(tmp_path: Path, ssh_keygen: str) -> None:
    k = keygen(ssh_keygen, tmp_path / "rsa", "-t", "rsa", "-b", "2048")
    with pytest.raises(KeyFileError, match=rf"{k}: key type ssh-rsa .*ssh-ed25519"):
        read_key(k)
    with pytest.raises(KeyFileError, match=r"ssh-rsa.*only ssh-ed25519"):
        PublicKey.parse_openssh((tmp_path / "rsa.pub").read_text())


def test_encrypted_rsa_key_named_without_passphrase(tmp_path: Path, ssh_keygen: str) -> None:
    # The key type is in the clear header: say "not ed25519" before asking for a passphrase.
    k = keygen(ssh_keygen, tmp_path / "rsa", "-t", "rsa", "-b", "2048", passphrase="pw")
    with pytest.raises(KeyFileError, match="ssh-rsa"):
        read_key(k)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an OpenSSH private key"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "another"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", "END line"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\n!!\n-----END OPENSSH PRIVATE KEY-----", "base64"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----", "magic"),
    ],
)
def test_bad_private_key_files(data: bytes, message: str) -> None:
    with pytest.raises(KeyFileError, match=rf"keys/signer.*{message}"):
        load_private_key(data, passphrase=None, source="keys/signer")


def test_public_key_given_as_private(tmp_path: Path, ssh_keygen: str) -> None:
    keygen(ssh_keygen, tmp_path / "k", "-t", "ed25519")
    pub = tmp_path / "k.pub"
    with pytest.raises(KeyFileError, match="is a public key"):
        read_key(pub)


# --- trust files ------------------------------------------------------------


def test_bare_public_key_file(tmp_path: Path, ssh_keygen: str) -> None:
    keygen(ssh_keygen, tmp_path / "k", "-t", "ed25519")
    text = "# alice's key\n\n" + (tmp_path / "k.pub").read_text()
    [key] = parse_trust_file(text, source="keys/alice.pub")
    assert key.principals == ("*",)
    assert key.namespaces is None
    assert key.valid_after is None and key.valid_before is None
    assert key.source == "keys/alice.pub:3"
    assert key.public_key.comment == "test@example"
    assert key.allows("anything", NOW)


def test_allowed_signers_with_namespaces_and_quotes() -> None:
    a, b = public_key_of(fresh_key()), public_key_of(fresh_key())
    text = (
        f'alice@example.com,bob@example.com namespaces="airbundle,file" {a.openssh_line()} c1\n'
        f'  "carol smith@example.com" NAMESPACES="git,!gitx*" {b.openssh_line()}\r\n'
    )
    first, second = parse_trust_file(text, source="allowed_signers")
    assert first.principals == ("alice@example.com", "bob@example.com")
    assert first.namespaces == ("airbundle", "file")
    assert first.public_key == a and first.public_key.comment == "c1"
    assert first.allows("airbundle", NOW) and first.allows("file", NOW)
    assert not first.allows("git", NOW)
    assert second.principals == ("carol smith@example.com",)
    assert second.source == "allowed_signers:2"
    assert second.allows("git", NOW)
    assert not second.allows("gitxyz", NOW)


def test_key_rotation_windows() -> None:
    old, new = public_key_of(fresh_key()), public_key_of(fresh_key())
    text = (
        f'ops valid-before="20250101Z" {old.openssh_line()}\n'
        f'ops valid-after="20241201",namespaces="airbundle" {new.openssh_line()}\n'
    )
    old_key, new_key = parse_trust_file(text, source="trust")
    assert old_key.valid_before == datetime(2025, 1, 1, tzinfo=UTC)
    # Without Z we read UTC, not local time.
    assert new_key.valid_after == datetime(2024, 12, 1, tzinfo=UTC)
    early = datetime(2024, 11, 1, tzinfo=UTC)
    overlap = datetime(2024, 12, 15, tzinfo=UTC)
    late = datetime(2025, 2, 1, tzinfo=UTC)
    assert old_key.allows("airbundle", early) and not new_key.allows("airbundle", early)
    assert old_key.allows("airbundle", overlap) and new_key.allows("airbundle", overlap)
    assert not old_key.allows("airbundle", late) and new_key.allows("airbundle", late)
    # Boundaries are inclusive, as in ssh-keygen.
    assert old_key.allows("airbundle", datetime(2025, 1, 1, tzinfo=UTC))

    policy = TrustPolicy((old_key, new_key))
    with pytest.raises(SignatureError, match="expired at 2025-01-01"):
        policy.check([("sig/old", old)], namespace="airbundle", at=late)
    with pytest.raises(SignatureError, match="not valid until 2024-12-01"):
        policy.check([("sig/new", new)], namespace="airbundle", at=early)
    assert policy.check([("sig/new", new)], namespace="airbundle", at=late) == [new_key]


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("20240229", datetime(2024, 2, 29, tzinfo=UTC)),
        ("202402291230Z", datetime(2024, 2, 29, 12, 30, tzinfo=UTC)),
        ("20240229123059z", datetime(2024, 2, 29, 12, 30, 59, tzinfo=UTC)),
    ],
)
def test_timestamp_forms(stamp: str, expected: datetime) -> None:
    line = f'p valid-after="{stamp}" {public_key_of(fresh_key()).openssh_line()}'
    [key] = parse_trust_file(line, source="t")
    assert key.valid_after == expected


def test_allowed_signers_file_is_accepted_by_ssh_keygen(tmp_path: Path, ssh_keygen: str) -> None:
    # The same trust file must work with stock OpenSSH, so operators can check by hand.
    k = keygen(ssh_keygen, tmp_path / "k", "-t", "ed25519")
    pub = (tmp_path / "k.pub").read_text().strip()
    text = f'"ops@example" namespaces="airbundle",valid-after="20200101Z" {pub}\n'
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(text)
    [key] = parse_trust_file(text, source=str(allowed))
    sig = tmp_path / "sig"
    sig.write_bytes(sign(DATA, read_key(k)))
    result = subprocess.run(
        [
            ssh_keygen,
            "-Y",
            "verify",
            "-n",
            NAMESPACE,
            "-f",
            allowed,
            "-I",
            "ops@example",
            "-s",
            sig,
        ],
        input=DATA,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()
    signer = verify(DATA, sig.read_bytes())
    assert TrustPolicy((key,)).check([("sig", signer)], namespace=NAMESPACE, at=NOW) == [key]


def test_cert_authority_rejected() -> None:
    line = f"*@example.com cert-authority {public_key_of(fresh_key()).openssh_line()}"
    with pytest.raises(KeyFileError, match=r"trust:1: cert-authority is not supported"):
        parse_trust_file(line, source="trust")


def test_non_ed25519_line_names_location(tmp_path: Path, ssh_keygen: str) -> None:
    keygen(ssh_keygen, tmp_path / "rsa", "-t", "rsa", "-b", "2048")
    rsa = (tmp_path / "rsa.pub").read_text()
    ed = public_key_of(fresh_key()).openssh_line()
    with pytest.raises(KeyFileError, match=r"keys:2: key type ssh-rsa .*ssh-ed25519"):
        parse_trust_file(f"{ed}\n{rsa}", source="keys")
    with pytest.raises(KeyFileError, match=r"keys:3: key type ssh-rsa"):
        parse_trust_file(f"{ed}\n\nalice {rsa}", source="keys")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice", "found only 'alice'"),
        ("alice bogus-option {key}", "unknown option 'bogus-option'"),
        ('alice color="red" {key}', "unknown option 'color'"),
        ("alice namespaces=airbundle {key}", "double-quoted"),
        ('alice namespaces="a,,b" {key}', "empty entry"),
        ('alice namespaces="a" namespaces="b" {key}', "commas, not spaces"),
        ('alice namespaces="a",namespaces="b" {key}', "given twice"),
        ('alice valid-after="2024" {key}', "YYYYMMDD"),
        ('alice valid-after="20241399" {key}', "not a valid date"),
        ('alice valid-after="20250101",valid-before="20240101" {key}', "not later"),
        ('alice namespaces="open {key}', "unterminated"),
        ('"alice {key}', "unterminated"),
        ('"alice"x {key}', "closing quote"),
        ('alice namespaces="x"', "key is missing"),
        ("ssh-ed25519", "key after ssh-ed25519 is missing"),
        ("ssh-ed25519 !!!!", "not valid base64"),
        ("ssh-ed25519 AAAA", "malformed ssh-ed25519"),
    ],
)
def test_malformed_lines_name_line_number(line: str, message: str) -> None:
    key = public_key_of(fresh_key()).openssh_line()
    text = f"# header\n{key}\n\n{line.format(key=key)}\n"
    with pytest.raises(KeyFileError, match=rf"^trust\.txt:4: .*{message}"):
        parse_trust_file(text, source="trust.txt")


def test_mismatched_blob_type_rejected() -> None:
    fake = base64.b64encode(_rsa_key_blob()).decode()
    message = "t:1: malformed ssh-ed25519 public key: key type ssh-rsa"
    with pytest.raises(KeyFileError, match=message):
        parse_trust_file(f"ssh-ed25519 {fake}", source="t")


# --- threshold policy -------------------------------------------------------


def test_threshold_two_of_three() -> None:
    a, b, c = fresh_key(), fresh_key(), fresh_key()
    policy = TrustPolicy((trusted(a, "a"), trusted(b, "b"), trusted(c, "c")), threshold=2)
    pa, pb = public_key_of(a), public_key_of(b)

    with pytest.raises(
        SignatureError, match=r"1 trusted signature\(s\) of 2 required.*counted once"
    ):
        policy.check([("s/1", pa), ("s/2", pa)], namespace=NAMESPACE, at=NOW)

    outsider = public_key_of(fresh_key())
    with pytest.raises(SignatureError) as info:
        policy.check([("s/1", pa), ("s/2", outsider)], namespace=NAMESPACE, at=NOW)
    message = info.value.message
    assert f"{pa.fingerprint} in s/1 (trusted)" in message
    assert f"{outsider.fingerprint} in s/2 (not in trust set)" in message

    matched = policy.check([("s/1", pa), ("s/2", pb), ("s/3", pa)], namespace=NAMESPACE, at=NOW)
    assert [m.source for m in matched] == ["a", "b"]


def test_no_signers_message() -> None:
    policy = TrustPolicy((trusted(fresh_key()),))
    with pytest.raises(SignatureError, match="signers: none"):
        policy.check([], namespace=NAMESPACE, at=NOW)


def test_namespace_restriction_applies_in_policy() -> None:
    key = public_key_of(fresh_key())
    [entry] = parse_trust_file(f'ci namespaces="git" {key.openssh_line()}', source="t")
    with pytest.raises(SignatureError, match="trusted only for namespaces git"):
        TrustPolicy((entry,)).check([("s", key)], namespace=NAMESPACE, at=NOW)


def test_threshold_validated() -> None:
    a = trusted(fresh_key())
    with pytest.raises(UsageError, match="at least 1"):
        TrustPolicy((a,), threshold=0)
    # The same key listed twice is still one key.
    with pytest.raises(UsageError, match="1 distinct key"):
        TrustPolicy((a, TrustedKey(a.public_key, ("x",), None, None, None, "y")), threshold=2)
    with pytest.raises(UsageError, match="empty"):
        TrustPolicy(())


def test_naive_time_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        trusted(fresh_key()).allows(NAMESPACE, datetime(2025, 1, 1))


# --- properties -------------------------------------------------------------


_VALID_BLOB = _sshsig_blob(public_key_of(Ed25519PrivateKey.generate()).wire_blob)


def _mutations() -> st.SearchStrategy[bytes]:
    def mutate(data: tuple[int, int, bytes]) -> bytes:
        cut, flip, extra = data
        blob = bytearray(_VALID_BLOB[: cut % (len(_VALID_BLOB) + 1)] + extra)
        if blob:
            blob[flip % len(blob)] ^= 0xFF
        return _armor(bytes(blob))

    return st.tuples(st.integers(0, 10_000), st.integers(0, 10_000), st.binary(max_size=8)).map(
        mutate
    )


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=512),
        st.binary(max_size=512).map(_armor),
        _mutations(),
        st.text(alphabet="-BEGINSH SIGNATURE\nAZaz09+/=\r", max_size=200).map(str.encode),
    )
)
def test_parse_signature_only_raises_signature_error(data: bytes) -> None:
    try:
        result = parse_signature(data)
    except SignatureError:
        return
    assert isinstance(result, Signature)


_TRUST_TOKENS = [
    "ssh-ed25519",
    "ssh-rsa",
    "alice",
    '"quoted name"',
    '"',
    "\\",
    ",",
    "=",
    "cert-authority",
    'namespaces="a,b"',
    'namespaces="!x*"',
    'valid-after="20240101Z"',
    'valid-before="99991231235959"',
    'valid-after="00000000"',
    'valid-before="20241301"',
    "AAAAC3NzaC1lZDI1NTE5AAAAIGMVi2nZex1RMXNmUGGiaxHHvakDedi5lHRDgfv6T/zT",
    "AAAA",
    "#",
    " ",
    "\t",
    "\n",
    "\r\n",
    "comment",
]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(st.sampled_from(_TRUST_TOKENS), max_size=12).map("".join),
        st.lists(st.sampled_from(_TRUST_TOKENS), max_size=8).map(" ".join),
    )
)
def test_parse_trust_file_only_raises_key_file_error(text: str) -> None:
    try:
        keys = parse_trust_file(text, source="fuzz")
    except KeyFileError:
        return
    for key in keys:
        assert isinstance(key, TrustedKey)
        key.allows("airbundle", NOW)


def test_module_constants() -> None:
    assert NAMESPACE == "airbundle"
    assert sshsig.MAX_ARMORED_SIGNATURE_BYTES == 16 * 1024
