"""OpenSSH signatures (SSHSIG, as in OpenSSH's PROTOCOL.sshsig) with Ed25519 keys.

Signatures are the ones ``ssh-keygen -Y sign`` writes and ``ssh-keygen -Y verify``
reads, so that an operator can check a bundle with stock OpenSSH and no airbundle
at all. Only Ed25519 is accepted: one algorithm, deterministic signatures and
no parameters to get wrong.

Everything here is pure: bytes in, values out. Reading key files from disk and
deciding which signers are trusted are someone else's job (see
:mod:`airbundle.format.trust` for the latter).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Final

import bcrypt
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from airbundle.errors import KeyFileError, SignatureError, UsageError
from airbundle.limits import DEFAULT_LIMITS

NAMESPACE: Final = "airbundle"
KEY_TYPE: Final = "ssh-ed25519"
SUPPORTED_HASHES: Final = ("sha256", "sha512")
MAX_ARMORED_SIGNATURE_BYTES: Final = DEFAULT_LIMITS.max_signature_bytes

_MAGIC: Final = b"SSHSIG"
_SIG_VERSION: Final = 1
_BEGIN: Final = "-----BEGIN SSH SIGNATURE-----"
_END: Final = "-----END SSH SIGNATURE-----"
# ssh-keygen wraps at 70 columns; matching it keeps our output byte-identical.
_ARMOR_WIDTH: Final = 70
_ED25519_KEY_LEN: Final = 32
_ED25519_SIG_LEN: Final = 64

_PRIVATE_BEGIN: Final = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_PRIVATE_END: Final = b"-----END OPENSSH PRIVATE KEY-----"
_PRIVATE_MAGIC: Final = b"openssh-key-v1\x00"
_BASE64_ALPHABET: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
)


class _WireError(ValueError):
    """Malformed SSH wire data; callers turn it into the error their caller expects."""


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self._data) - self._pos:
            raise _WireError("data ends early")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.uint32())

    def text(self, what: str) -> str:
        raw = self.string()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _WireError(f"{what} is not valid UTF-8") from None

    def end(self) -> None:
        if self._pos != len(self._data):
            raise _WireError(f"{len(self._data) - self._pos} unexpected trailing byte(s)")


def _ed25519_from_blob(blob: bytes) -> bytes:
    """The raw key inside an SSH public key blob; raises _WireError."""
    reader = _Reader(blob)
    key_type = reader.text("key type")
    if key_type != KEY_TYPE:
        raise _WireError(f"key type {key_type}")
    raw = reader.string()
    reader.end()
    if len(raw) != _ED25519_KEY_LEN:
        raise _WireError(f"Ed25519 key is {len(raw)} bytes, expected {_ED25519_KEY_LEN}")
    return raw


def _unsupported_key(key_type: str) -> str:
    return f"key type {key_type} is not supported; airbundle accepts only {KEY_TYPE} keys"


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, compared by its key bytes alone."""

    raw: bytes
    comment: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.raw) != _ED25519_KEY_LEN:
            raise KeyFileError(
                f"an Ed25519 public key is {_ED25519_KEY_LEN} bytes, not {len(self.raw)}"
            )

    @property
    def wire_blob(self) -> bytes:
        return _string(KEY_TYPE.encode()) + _string(self.raw)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.wire_blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    def openssh_line(self) -> str:
        line = f"{KEY_TYPE} {base64.b64encode(self.wire_blob).decode('ascii')}"
        return f"{line} {self.comment}" if self.comment else line

    def crypto_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)

    @classmethod
    def parse_openssh(cls, line: str, *, source: str = "public key") -> PublicKey:
        """Parse ``ssh-ed25519 BASE64 [comment]``, as in a ``.pub`` file.

        ``source`` only prefixes error messages, so that a caller reading a
        file can say which file and line is at fault.
        """
        parts = line.strip().split(maxsplit=2)
        if len(parts) < 2:
            raise KeyFileError(
                f"{source}: not an OpenSSH public key (expected '{KEY_TYPE} BASE64 [comment]')"
            )
        return cls.from_parts(
            parts[0], parts[1], parts[2] if len(parts) == 3 else "", source=source
        )

    @classmethod
    def from_parts(
        cls, key_type: str, encoded: str, comment: str = "", *, source: str = "public key"
    ) -> PublicKey:
        """Build from the already split fields of a key line: type, base64 blob, comment."""
        if key_type != KEY_TYPE:
            raise KeyFileError(f"{source}: {_unsupported_key(key_type)}")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{source}: the public key is not valid base64") from None
        try:
            raw = _ed25519_from_blob(blob)
        except _WireError as exc:
            raise KeyFileError(f"{source}: malformed {KEY_TYPE} public key: {exc}") from None
        return cls(raw, comment)


def _split_openssh_private(data: bytes, source: str) -> bytes:
    """The binary body of an OpenSSH private key file, with precise errors."""
    text = data.strip()
    if text.startswith((b"ssh-", b"ecdsa-", b"sk-")):
        raise KeyFileError(
            f"{source} is a public key; pass the private key file (the one without .pub)"
        )
    if not text.startswith(_PRIVATE_BEGIN):
        hint = ""
        if text.startswith(b"-----BEGIN "):
            hint = " (it is PEM of another kind; convert it with ssh-keygen -p -f FILE)"
        raise KeyFileError(f"{source} is not an OpenSSH private key{hint}")
    if not text.endswith(_PRIVATE_END):
        raise KeyFileError(f"{source} is not an OpenSSH private key: the END line is missing")
    body = b"".join(text[len(_PRIVATE_BEGIN) : -len(_PRIVATE_END)].split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source} is not an OpenSSH private key: bad base64") from None


def _private_header(blob: bytes) -> tuple[str, str]:
    """(cipher name, key type) from the unencrypted header of an OpenSSH key."""
    if not blob.startswith(_PRIVATE_MAGIC):
        raise _WireError("missing openssh-key-v1 magic")
    reader = _Reader(blob)
    reader.take(len(_PRIVATE_MAGIC))
    cipher = reader.text("cipher name")
    reader.string()  # KDF name: cryptography handles it
    reader.string()  # KDF options
    count = reader.uint32()
    if count != 1:
        raise _WireError(f"the file holds {count} keys, expected 1")
    key_type = _Reader(reader.string()).text("key type")
    return cipher, key_type


def load_private_key(data: bytes, *, passphrase: bytes | None, source: str) -> Ed25519PrivateKey:
    """Load an Ed25519 key in OpenSSH format, as ``ssh-keygen -t ed25519`` writes it.

    The header is read before decryption so that the key type and whether a
    passphrase is needed can be reported even when no passphrase was given.
    A passphrase given for an unencrypted key is ignored, because callers may
    take it from the environment for every key they load.
    """
    blob = _split_openssh_private(data, source)
    try:
        cipher, key_type = _private_header(blob)
    except _WireError as exc:
        raise KeyFileError(f"{source} is not a valid OpenSSH private key: {exc}") from None
    if key_type != KEY_TYPE:
        raise KeyFileError(
            f"{source}: {_unsupported_key(key_type)}",
            hint="create one with: ssh-keygen -t ed25519 -f FILE",
        )
    encrypted = cipher != "none"
    if encrypted and not passphrase:
        raise KeyFileError(f"{source} is encrypted and a passphrase is needed")
    try:
        key = serialization.load_ssh_private_key(data, passphrase if encrypted else None)
    except ValueError as exc:
        if encrypted and passphrase and _passphrase_fails(blob, passphrase):
            raise KeyFileError(f"wrong passphrase for {source}") from None
        raise KeyFileError(f"{source}: cannot read the private key: {exc}") from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{source}: cannot read the private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{source}: {_unsupported_key(key_type)}")
    return key


# Ciphers whose first decrypted block we can check ourselves (ssh-keygen and
# cryptography write aes256-ctr): name -> key length, block mode.
_CHECKABLE_CIPHERS: Final = {
    "aes128-ctr": (16, "ctr"),
    "aes192-ctr": (24, "ctr"),
    "aes256-ctr": (32, "ctr"),
    "aes256-cbc": (32, "cbc"),
}
_AES_BLOCK: Final = 16


def _passphrase_fails(blob: bytes, passphrase: bytes) -> bool:
    """True if `passphrase` certainly does not open the key: the two check
    integers that start the decrypted section differ (what OpenSSH itself
    calls a wrong passphrase). False where that cannot be told. Run only after
    a load failed, so the KDF's cost is paid twice only then."""
    try:
        reader = _Reader(blob)
        reader.take(len(_PRIVATE_MAGIC))
        cipher = reader.text("cipher name")
        kdf = reader.text("KDF name")
        options = _Reader(reader.string())
        reader.uint32()  # key count
        reader.string()  # public key
        encrypted = reader.string()
        salt = options.string()
        rounds = options.uint32()
    except _WireError:
        return False
    known = _CHECKABLE_CIPHERS.get(cipher)
    if known is None or kdf != "bcrypt" or len(encrypted) < _AES_BLOCK:
        return False
    key_length, mode = known
    derived = bcrypt.kdf(passphrase, salt, key_length + _AES_BLOCK, rounds, ignore_few_rounds=True)
    key, iv = algorithms.AES(derived[:key_length]), derived[key_length:]
    if mode == "ctr":
        first = Cipher(key, modes.CTR(iv)).decryptor().update(encrypted[:_AES_BLOCK])
    else:
        first = Cipher(key, modes.CBC(iv)).decryptor().update(encrypted[:_AES_BLOCK])
    return first[:4] != first[4:8]


def serialize_private_key(key: Ed25519PrivateKey, *, passphrase: bytes | None) -> bytes:
    """The key in OpenSSH PEM format; an empty or absent passphrase means unencrypted."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
    )


def public_key_of(private_key: Ed25519PrivateKey, comment: str = "") -> PublicKey:
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return PublicKey(raw, comment)


@dataclass(frozen=True)
class Signature:
    """A parsed SSHSIG signature; not yet verified."""

    public_key: PublicKey
    namespace: str
    hash_algorithm: str
    signature: bytes
    reserved: bytes = b""


def _signed_data(data: bytes, namespace: str, hash_algorithm: str, reserved: bytes) -> bytes:
    digest = hashlib.new(hash_algorithm, data).digest()
    return (
        _MAGIC
        + _string(namespace.encode("utf-8"))
        + _string(reserved)
        + _string(hash_algorithm.encode("ascii"))
        + _string(digest)
    )


def _armor(blob: bytes) -> bytes:
    encoded = base64.b64encode(blob).decode("ascii")
    lines = [encoded[i : i + _ARMOR_WIDTH] for i in range(0, len(encoded), _ARMOR_WIDTH)]
    return "\n".join([_BEGIN, *lines, _END, ""]).encode("ascii")


def sign(
    data: bytes,
    private_key: Ed25519PrivateKey,
    *,
    namespace: str = NAMESPACE,
    hash_algorithm: str = "sha512",
) -> bytes:
    """Armored SSHSIG signature of ``data``, as ``ssh-keygen -Y sign -n NAMESPACE`` writes it."""
    if not namespace:
        raise UsageError("a signature namespace must not be empty")
    if hash_algorithm not in SUPPORTED_HASHES:
        raise UsageError(
            f"unsupported signature hash {hash_algorithm!r}; use one of "
            + ", ".join(SUPPORTED_HASHES)
        )
    public = public_key_of(private_key)
    raw_sig = private_key.sign(_signed_data(data, namespace, hash_algorithm, b""))
    blob = (
        _MAGIC
        + struct.pack(">I", _SIG_VERSION)
        + _string(public.wire_blob)
        + _string(namespace.encode("utf-8"))
        + _string(b"")
        + _string(hash_algorithm.encode("ascii"))
        + _string(_string(KEY_TYPE.encode()) + _string(raw_sig))
    )
    return _armor(blob)


def _dearmor(armored: bytes) -> bytes:
    not_armored = "signature is not SSHSIG armored text"
    try:
        text = armored.decode("ascii")
    except UnicodeDecodeError:
        raise SignatureError(f"{not_armored} (it contains non-ASCII bytes)") from None
    lines = text.split("\n")
    # One final newline is what ssh-keygen writes; CRLF survives some transports.
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if len(lines) < 3 or lines[0] != _BEGIN or lines[-1] != _END:
        raise SignatureError(f"{not_armored} (expected {_BEGIN} ... {_END})")
    body = lines[1:-1]
    if _BEGIN in body or _END in body:
        raise SignatureError("signature file holds more than one SSHSIG block; expected one")
    joined = "".join(body)
    if not joined or not set(joined.encode("ascii")) <= _BASE64_ALPHABET:
        raise SignatureError(f"{not_armored} (the body is not base64)")
    try:
        return base64.b64decode(joined, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{not_armored} (the body is not valid base64)") from None


def parse_signature(armored: bytes) -> Signature:
    """Parse an armored SSHSIG signature strictly; raise SignatureError on anything odd.

    A non-empty ``reserved`` field is accepted and kept: PROTOCOL.sshsig puts
    it in the signed data, so :func:`verify` checks it rather than ignoring it.
    """
    if len(armored) > MAX_ARMORED_SIGNATURE_BYTES:
        raise SignatureError(
            f"signature is {len(armored)} bytes, more than the "
            f"{MAX_ARMORED_SIGNATURE_BYTES} bytes an SSHSIG signature can need"
        )
    blob = _dearmor(armored)
    if not blob.startswith(_MAGIC):
        raise SignatureError("signature does not start with the SSHSIG magic")
    reader = _Reader(blob)
    try:
        reader.take(len(_MAGIC))
        version = reader.uint32()
        if version != _SIG_VERSION:
            raise SignatureError(
                f"signature has SSHSIG version {version}; airbundle reads version {_SIG_VERSION}"
            )
        key_blob = reader.string()
        namespace = reader.text("namespace")
        reserved = reader.string()
        hash_algorithm = reader.text("hash algorithm")
        sig_blob = reader.string()
        reader.end()
        key_type = _Reader(key_blob).text("key type")
        if key_type != KEY_TYPE:
            raise SignatureError(
                f"signature uses unsupported key type {key_type}; airbundle accepts {KEY_TYPE}"
            )
        raw_key = _ed25519_from_blob(key_blob)
        sig_reader = _Reader(sig_blob)
        sig_type = sig_reader.text("signature algorithm")
        raw_sig = sig_reader.string()
        sig_reader.end()
    except _WireError as exc:
        raise SignatureError(f"signature is malformed: {exc}") from None
    if sig_type != KEY_TYPE:
        raise SignatureError(
            f"signature uses unsupported algorithm {sig_type}; airbundle accepts {KEY_TYPE}"
        )
    if len(raw_sig) != _ED25519_SIG_LEN:
        raise SignatureError(
            f"signature is malformed: Ed25519 signature is {len(raw_sig)} bytes, "
            f"expected {_ED25519_SIG_LEN}"
        )
    if not namespace:
        raise SignatureError("signature has an empty namespace")
    if hash_algorithm not in SUPPORTED_HASHES:
        raise SignatureError(
            f"signature uses unsupported hash {hash_algorithm!r}; airbundle accepts "
            + " or ".join(SUPPORTED_HASHES)
        )
    return Signature(PublicKey(raw_key), namespace, hash_algorithm, raw_sig, reserved)


def verify(data: bytes, armored: bytes, *, namespace: str = NAMESPACE) -> PublicKey:
    """Check that ``armored`` is a valid signature of ``data`` and return its signer.

    This proves only who signed; whether that signer is trusted is for
    :class:`airbundle.format.trust.TrustPolicy` to decide.
    """
    sig = parse_signature(armored)
    if sig.namespace != namespace:
        raise SignatureError(
            f"signature is for namespace {sig.namespace!r}, expected {namespace!r}",
            hint=f"sign with: ssh-keygen -Y sign -n {namespace} -f KEY FILE",
        )
    signed = _signed_data(data, sig.namespace, sig.hash_algorithm, sig.reserved)
    try:
        sig.public_key.crypto_key().verify(sig.signature, signed)
    except InvalidSignature:
        raise SignatureError(
            f"signature by {sig.public_key.fingerprint} does not match the signed data "
            "(the data or the signature was altered)"
        ) from None
    return sig.public_key
