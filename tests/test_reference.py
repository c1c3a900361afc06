"""Image references and digests: docker normalization, strictness, round trips."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from airbundle.errors import FormatError, InvalidDigestError, InvalidReferenceError
from airbundle.format.digest import Digest
from airbundle.format.reference import (
    ImageReference,
    is_loopback_registry,
    validate_repository,
    validate_tag,
)

HEX64 = "ab" * 32
HEX128 = "cd" * 64
SHA256 = f"sha256:{HEX64}"
SHA512 = f"sha512:{HEX128}"
D256 = Digest("sha256", HEX64)
D512 = Digest("sha512", HEX128)

# (input, registry, repository, tag, digest)
NORMALIZATION_CASES: list[tuple[str, str, str, str | None, Digest | None]] = [
    ("nginx", "docker.io", "library/nginx", "latest", None),
    ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("user/app", "docker.io", "user/app", "latest", None),
    ("user/app:v1", "docker.io", "user/app", "v1", None),
    ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("docker.io/library/nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("docker.io/library", "docker.io", "library/library", "latest", None),
    ("index.docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("index.docker.io/user/app:v1", "docker.io", "user/app", "v1", None),
    # Only index.docker.io is rewritten; distribution leaves registry-1 alone.
    ("registry-1.docker.io/library/nginx", "registry-1.docker.io", "library/nginx", "latest", None),
    ("library/a/b", "docker.io", "library/a/b", "latest", None),
    ("store/foo/bar", "docker.io", "store/foo/bar", "latest", None),
    ("localhost/foo", "localhost", "foo", "latest", None),
    ("localhost:5000/foo", "localhost:5000", "foo", "latest", None),
    ("localhost:5000/foo/bar:dev", "localhost:5000", "foo/bar", "dev", None),
    # A single component is never a registry, even when it looks like one.
    ("localhost", "docker.io", "library/localhost", "latest", None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    ("example.com", "docker.io", "library/example.com", "latest", None),
    ("192.168.1.1", "docker.io", "library/192.168.1.1", "latest", None),
    ("192.168.1.1:5000", "docker.io", "library/192.168.1.1", "5000", None),
    ("192.168.1.1/repo", "192.168.1.1", "repo", "latest", None),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", "latest", None),
    ("test-com:8080/foo", "test-com:8080", "foo", "latest", None),
    ("test_com/foo", "docker.io", "test_com/foo", "latest", None),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", "latest", None),
    (f"host:5000/a/b:tag@{SHA256}", "host:5000", "a/b", "tag", D256),
    (f"quay.io/x/y@{SHA256}", "quay.io", "x/y", None, D256),
    (f"nginx@{SHA256}", "docker.io", "library/nginx", None, D256),
    (f"busybox:latest@{SHA256}", "docker.io", "library/busybox", "latest", D256),
    (f"example.com/app:v2@{SHA512}", "example.com", "app", "v2", D512),
    ("[::1]:5000/foo:bar", "[::1]:5000", "foo", "bar", None),
    ("[2001:db8::1]/repo", "[2001:db8::1]", "repo", "latest", None),
    (f"[2001:db8::1]:5000/repo@{SHA256}", "[2001:db8::1]:5000", "repo", None, D256),
    (
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "[fc00:1:2:3:4:5:6:7]:5000",
        "library/debian",
        "latest",
        None,
    ),
    # distribution takes an uppercase first component to be a host name.
    ("Foo/bar", "Foo", "bar", "latest", None),
    ("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None),
    ("a-b---c/d__e.f_g", "docker.io", "a-b---c/d__e.f_g", "latest", None),
    # 64 characters, but not all hex: a name, not an image ID.
    (
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker.io",
        "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "latest",
        None,
    ),
    (f"docker.io/{HEX64}", "docker.io", f"library/{HEX64}", "latest", None),
    ("nginx:" + "t" * 128, "docker.io", "library/nginx", "t" * 128, None),
    ("ns/" + "a" * 252, "docker.io", "ns/" + "a" * 252, "latest", None),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), NORMALIZATION_CASES)
def test_normalization(
    text: str, registry: str, repository: str, tag: str | None, digest: Digest | None
) -> None:
    ref = ImageReference.parse(text)
    assert ref == ImageReference(registry, repository, tag, digest)
    assert ImageReference.parse(str(ref)) == ref
    assert ImageReference.parse(ref.familiar) == ref


# (input, fragment the message must contain)
INVALID_CASES: list[tuple[str, str]] = [
    ("", "empty"),
    (":tag", "repository name is empty"),
    (f"@{SHA256}", "repository name is empty"),
    ("Nginx", "repository name must be lowercase"),
    ("Nginx:1.25", "repository name must be lowercase"),
    ("docker.io/Library/nginx", "repository name must be lowercase"),
    ("host:5000/Uppercase/lowercase:tag", "repository name must be lowercase"),
    ("docker/Docker", "repository name must be lowercase"),
    ("a//b", "empty path component"),
    ("docker///docker", "empty path component"),
    ("foo/", "empty path component"),
    ("quay.io/", "repository name is empty"),
    ("/foo", "empty path component"),
    ("nginx:", "tag is empty"),
    ("nginx:" + "t" * 129, "129 characters"),
    ("nginx:-tag", "tag '-tag'"),
    ("nginx:tag:more", "tag 'tag:more'"),
    ("nginx@", "invalid digest"),
    ("-docker", "path component '-docker'"),
    ("docker-/docker", "path component 'docker-'"),
    ("dock..er/docker", "registry 'dock..er'"),
    ("____/____", "path component '____'"),
    ("-docker.io/docker/docker", "registry '-docker.io'"),
    ("https://github.com/docker/docker", "registry 'https:'"),
    ("[fc00::1]", "path component '[fc00'"),
    ("[fc00::1]:5000", "path component '[fc00'"),
    ("fc00::1:5000/debian", "registry 'fc00::1:5000'"),
    ("[fe80::1%eth0]:5000/debian", "registry"),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "registry"),
    ("host:port/app", "registry 'host:port'"),
    # distribution would fall back to a registry-less name here; we refuse.
    ("a_b.c/d", "registry 'a_b.c'"),
    (HEX64, "image ID"),
    ("a" * 250, "must not be more than 255 characters"),
    ("ns/" + "a" * 253, "must not be more than 255 characters"),
    ("a/" * 128 + "a:tag", "must not be more than 255 characters"),
    ("nginx@sha256:../../x", "invalid digest"),
    (f"nginx@sha256:{HEX64.upper()}", "lowercase"),
    (f"nginx@sha256:{HEX64[:-1]}", "64 hex characters, not 63"),
    (f"nginx@md5:{'0' * 32}", "unsupported algorithm 'md5'"),
    (f"nginx@{SHA256}@{SHA256}", "invalid digest"),
    ("nginx latest", "path component 'nginx latest'"),
    ("nginx\n", "path component 'nginx\\n'"),
    ("ngïnx", "path component"),
    ("nginx:١٢", "tag"),
]


@pytest.mark.parametrize(("text", "fragment"), INVALID_CASES)
def test_invalid_references(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        ImageReference.parse(text)
    message = info.value.message
    assert fragment in message
    assert message.startswith(f"invalid image reference {repr(text)[:40]}")
    assert info.value.hint
    assert isinstance(info.value, FormatError)


def test_error_message_truncates_long_input() -> None:
    with pytest.raises(InvalidReferenceError) as info:
        ImageReference.parse("A" * 10_000)
    assert len(info.value.message) < 400
    assert "..." in info.value.message


def test_str_and_properties() -> None:
    ref = ImageReference.parse("nginx:1.25")
    assert str(ref) == "docker.io/library/nginx:1.25"
    assert ref.name == "docker.io/library/nginx"
    assert ref.familiar == "nginx:1.25"
    assert ref.without_registry() == "library/nginx:1.25"

    pinned = ImageReference.parse(f"host:5000/a/b:tag@{SHA256}")
    assert str(pinned) == f"host:5000/a/b:tag@{SHA256}"
    assert pinned.familiar == f"host:5000/a/b:tag@{SHA256}"
    assert pinned.without_registry() == f"a/b:tag@{SHA256}"

    assert str(ImageReference.parse(f"quay.io/x/y@{SHA256}")) == f"quay.io/x/y@{SHA256}"


@pytest.mark.parametrize(
    ("text", "familiar"),
    [
        ("nginx", "nginx:latest"),
        ("docker.io/library/nginx:latest", "nginx:latest"),
        ("user/app:1", "user/app:1"),
        ("library/a/b", "library/a/b:latest"),
        ("localhost/foo", "localhost/foo:latest"),
        (f"busybox:latest@{SHA256}", f"busybox:latest@{SHA256}"),
        (f"docker.io/library/busybox@{SHA256}", f"busybox@{SHA256}"),
        ("quay.io/library/x", "quay.io/library/x:latest"),
        # FamiliarString would say "localhost/x" and "a.b/c": other registries.
        ("docker.io/localhost/x", "docker.io/localhost/x:latest"),
        ("docker.io/a.b/c", "docker.io/a.b/c:latest"),
        ("docker.io/localhost", "localhost:latest"),
    ],
)
def test_familiar(text: str, familiar: str) -> None:
    assert ImageReference.parse(text).familiar == familiar


def test_with_tag_and_digest() -> None:
    ref = ImageReference.parse("nginx:1.25")
    assert str(ref.with_tag("1.26")) == "docker.io/library/nginx:1.26"
    pinned = ref.with_digest(D256)
    assert str(pinned) == f"docker.io/library/nginx:1.25@{SHA256}"
    assert str(pinned.with_tag("x")) == f"docker.io/library/nginx:x@{SHA256}"
    with pytest.raises(InvalidReferenceError, match="invalid tag"):
        ref.with_tag("bad tag")
    with pytest.raises(InvalidReferenceError):
        ref.with_tag("")


@pytest.mark.parametrize(
    ("registry", "repository", "tag", "digest"),
    [
        ("myregistry", "foo", "latest", None),  # would read back as docker.io/myregistry/foo
        ("index.docker.io", "library/nginx", "latest", None),
        ("docker.io", "nginx", "latest", None),  # would read back as library/nginx
        ("docker.io", "library/nginx", None, None),  # would read back with :latest
        ("docker.io", "library/nginx", "", None),
        ("docker.io", "library/Nginx", "latest", None),
        ("bad_host.io", "x", "latest", None),
        ("quay.io", "", "latest", None),
    ],
)
def test_constructor_rejects_non_canonical(
    registry: str, repository: str, tag: str | None, digest: Digest | None
) -> None:
    with pytest.raises(InvalidReferenceError):
        ImageReference(registry, repository, tag, digest)


def test_validate_helpers() -> None:
    assert validate_tag("v1.2.3-rc_1") == "v1.2.3-rc_1"
    assert validate_tag("T" * 128) == "T" * 128
    for bad in ["", ".x", "-x", "a" * 129, "a/b", "a:b", "a b", "é"]:
        with pytest.raises(InvalidReferenceError, match="invalid tag"):
            validate_tag(bad)
    assert validate_repository("library/nginx") == "library/nginx"
    assert validate_repository("a" * 255) == "a" * 255
    with pytest.raises(InvalidReferenceError, match="repository name must be lowercase"):
        validate_repository("Library/nginx")
    for bad in ["", "a//b", "a/", "/a", "a" * 256, "a:b", "a@b", "quay.io:5000/x"]:
        with pytest.raises(InvalidReferenceError, match="invalid repository"):
            validate_repository(bad)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("LOCALHOST:5000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.255.1.2:80", True),
        ("[::1]", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("[0:0:0:0:0:0:0:1]:5000", True),
        ("128.0.0.1", False),
        ("10.0.0.1:5000", False),
        ("docker.io", False),
        ("localhost.example.com", False),
        ("localhost:", False),
        ("localhost:x", False),
        ("localhost:5000:1", False),
        ("[::1", False),
        ("[::1]5000", False),
        ("[::2]:5000", False),
        ("[127.0.0.1]", False),
        ("127.0.0.1:٥٠٠٠", False),
        ("", False),
    ],
)
def test_is_loopback_registry(host: str, loopback: bool) -> None:
    assert is_loopback_registry(host) is loopback


# --- digests -------------------------------------------------------------


def test_digest_valid() -> None:
    d = Digest.parse(SHA256)
    assert d == D256
    assert str(d) == SHA256
    assert d.blob_path == f"blobs/sha256/{HEX64}"
    assert Digest.parse(SHA512).blob_path == f"blobs/sha512/{HEX128}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256:",
        "sha256:../../x",
        f"sha256:../../{HEX64[6:]}",
        f"sha256:{HEX64.upper()}",
        f"sha256:{HEX64[:-1]}A",
        f"SHA256:{HEX64}",
        f"sha256:{HEX64[:-1]}",
        f"sha256:{HEX64}0",
        f"sha256:{HEX64}\n",
        f"sha256:{HEX64}\r\n",
        f" sha256:{HEX64}",
        f"sha256: {HEX64[1:]}",
        f"sha256:{HEX64[:-1]}\0",
        f"sha256:{HEX64[:-1]}g",
        f"md5:{'0' * 32}",
        f"sha384:{'0' * 96}",
        f"sha512:{HEX64}",
        f"sha512:{HEX128[:-1]}",
        f"sha512:{HEX128}0",
        HEX64,
        f"sha256+b64:{HEX64}",
        f"sha256:{'٠' * 64}",  # Arabic-Indic digits are \d, but not hex
    ],
)
def test_digest_rejects(text: str) -> None:
    with pytest.raises(InvalidDigestError) as info:
        Digest.parse(text)
    assert repr(text)[:40] in info.value.message


def test_digest_error_is_truncated() -> None:
    with pytest.raises(InvalidDigestError) as info:
        Digest.parse("sha256:" + "z" * 10_000)
    assert len(info.value.message) < 300


def test_digest_constructor_validates() -> None:
    with pytest.raises(InvalidDigestError):
        Digest("sha256", "../../etc/passwd")
    with pytest.raises(InvalidDigestError):
        Digest("md5", "0" * 32)


def test_digest_hashing_helpers() -> None:
    data = b"hello, air gap"
    expected = hashlib.sha256(data).hexdigest()
    assert Digest.sha256_of(data) == Digest("sha256", expected)
    h = hashlib.sha512()
    h.update(data)
    assert Digest.from_hasher(h) == Digest("sha512", hashlib.sha512(data).hexdigest())
    fresh = D256.new_hasher()
    fresh.update(data)
    assert Digest.from_hasher(fresh) == Digest.sha256_of(data)
    assert D512.new_hasher().name == "sha512"
    with pytest.raises(InvalidDigestError, match="md5"):
        Digest.from_hasher(hashlib.md5(data))  # noqa: S324 - testing rejection


def test_digest_ordering() -> None:
    assert sorted([D512, Digest("sha256", "f" * 64), D256]) == [
        D256,
        Digest("sha256", "f" * 64),
        D512,
    ]


# --- properties ----------------------------------------------------------

_REF_ALPHABET = "abAZ019._-/:@[]%\n sha256" + "é"
_near_reference = st.text(alphabet=_REF_ALPHABET, max_size=40)
_hex64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
_any_text = st.one_of(
    st.text(),
    _near_reference,
    st.builds(lambda a, h: f"{a}@sha256:{h}", _near_reference, _hex64),
)


@given(_any_text)
def test_parse_returns_or_raises_invalid_reference(text: str) -> None:
    try:
        ref = ImageReference.parse(text)
    except InvalidReferenceError:
        return
    # Whatever parses must be canonical after one step.
    assert ImageReference.parse(str(ref)) == ref
    assert ImageReference.parse(ref.familiar) == ref


_alnum = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
_separator = st.sampled_from([".", "_", "__", "-", "--", "---"])
_path_component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest),
    _alnum,
    st.lists(st.tuples(_separator, _alnum), max_size=3),
)
_path = st.lists(_path_component, min_size=1, max_size=4).map("/".join)
_domain_component = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?", fullmatch=True)
_domain_name = st.lists(_domain_component, min_size=1, max_size=3).map(".".join)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a.compressed}]")
_port = st.one_of(st.just(""), st.integers(0, 65535).map(lambda p: f":{p}"))
_host = st.builds(
    lambda h, p: h + p,
    st.one_of(_domain_name, _ipv6, st.sampled_from(["localhost", "docker.io", "index.docker.io"])),
    _port,
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
_digest = st.one_of(
    st.binary(max_size=16).map(Digest.sha256_of),
    st.from_regex(r"[0-9a-f]{128}", fullmatch=True).map(lambda h: Digest("sha512", h)),
)


@given(
    st.one_of(st.none(), _host),
    _path,
    st.one_of(st.none(), _tag),
    st.one_of(st.none(), _digest),
)
def test_grammar_references_round_trip(
    host: str | None, path: str, tag: str | None, digest: Digest | None
) -> None:
    text = path if host is None else f"{host}/{path}"
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    assume(not (text.isalnum() and len(text) == 64))
    first, slash, _ = path.partition("/")
    if host is None and slash and "." in first:
        # A dotted first component is taken as a registry. When it is not a
        # valid host, distribution falls back to a registry-less name, which
        # we refuse (see the "a_b.c/d" case).
        try:
            ImageReference.parse(text)
        except InvalidReferenceError as exc:
            assert f"registry {first!r}" in exc.message
        return
    ref = ImageReference.parse(text)
    assert ImageReference.parse(str(ref)) == ref
    assert ImageReference.parse(ref.familiar) == ref
    assert ref.digest == digest
    assert ref.tag == (tag if tag is not None or digest is not None else "latest")
    assert ref.name.endswith(path)
    assert str(ref).endswith(ref.without_registry())


@given(_domain_name, _port, _path, _tag, st.one_of(st.none(), _digest))
def test_constructed_references_round_trip(
    domain: str, port: str, path: str, tag: str, digest: Digest | None
) -> None:
    registry = domain + port
    assume("." in registry or ":" in registry or registry != registry.lower())
    assume(registry != "index.docker.io")
    assume(registry != "docker.io" or "/" in path)
    ref = ImageReference(registry, path, tag, digest)
    assert ImageReference.parse(str(ref)) == ref


_near_digest = st.one_of(
    st.text(),
    st.builds(
        lambda algo, body: f"{algo}:{body}",
        st.sampled_from(["sha256", "sha512", "SHA256", "md5", "sha384", ""]),
        st.one_of(
            st.text(alphabet="0123456789abcdefABCDEF./\n", max_size=130),
            st.from_regex(r"[0-9a-f]{64}|[0-9a-f]{128}", fullmatch=True),
            _hex64.map(lambda h: h + "\n"),
        ),
    ),
)


@given(_near_digest)
def test_digest_parse_is_exact(text: str) -> None:
    try:
        d = Digest.parse(text)
    except InvalidDigestError:
        return
    assert str(d) == text
    assert d.blob_path == f"blobs/{d.algorithm}/{d.hex}"
    assert "/" not in d.hex
    assert "." not in d.hex
