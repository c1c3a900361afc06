"""format/distribution.py: the pull side of the distribution spec as pure values."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airbundle.errors import UsageError
from airbundle.format import distribution as dist
from airbundle.format.digest import Digest
from support.env import require_tool

DIGEST = "sha256:" + "a" * 64


def test_routes_name_the_resource_and_keep_slashes_in_names() -> None:
    assert dist.parse_route("/v2/") == dist.Route("ping")
    assert dist.parse_route("/v2/_catalog") == dist.Route("catalog")
    assert dist.parse_route("/v2/a/b/c/tags/list") == dist.Route("tags", "a/b/c")
    assert dist.parse_route("/v2/a/b/manifests/1.0") == dist.Route("manifest", "a/b", "1.0")
    assert dist.parse_route(f"/v2/a/manifests/{DIGEST}").digest is not None
    assert dist.parse_route(f"/v2/a/blobs/{DIGEST}") == dist.Route("blob", "a", DIGEST)
    assert dist.parse_route(f"/v2/a/referrers/{DIGEST}") == dist.Route("referrers", "a", DIGEST)
    assert dist.parse_route("/v2/a/blobs/uploads/").kind == "upload"
    # A repository may be called "manifests": the last fixed component decides.
    assert dist.parse_route(f"/v2/x/manifests/blobs/{DIGEST}") == dist.Route(
        "blob", "x/manifests", DIGEST
    )


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/UPPER/tags/list", dist.NAME_INVALID),
        ("/v2/a/manifests/sha256:totallywrong", dist.DIGEST_INVALID),
        ("/v2/a/blobs/not-a-digest", dist.DIGEST_INVALID),
        ("/v2/a/manifests/-bad-tag", dist.MANIFEST_UNKNOWN),
        ("/v2/a/nothing", dist.NOT_FOUND),
        ("/elsewhere", dist.NOT_FOUND),
    ],
)
def test_malformed_routes_are_spec_errors(path: str, code: dist.ErrorCode) -> None:
    with pytest.raises(dist.ApiError) as err:
        dist.parse_route(path)
    assert err.value.code is code


@given(st.text(max_size=300))
def test_any_path_is_a_route_or_an_api_error(path: str) -> None:
    try:
        dist.parse_route("/v2/" + path)
    except dist.ApiError as exc:
        assert exc.status is not None and 400 <= exc.status < 500


def test_error_body_is_the_spec_json() -> None:
    doc = json.loads(dist.error_body(dist.BLOB_UNKNOWN, "x@sha256:1"))
    assert doc == {
        "errors": [
            {"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": "x@sha256:1"}
        ]
    }


def test_pagination_after_last_at_most_n_with_a_link() -> None:
    items = ["d", "a", "c", "b"]
    page = dist.parse_page({"n": "2"}, max_n=1000)
    assert dist.paginate(items, page) == (["a", "b"], True)
    assert dist.paginate(items, dist.parse_page({"n": "2", "last": "b"}, max_n=1000)) == (
        ["c", "d"],
        False,
    )
    assert dist.paginate(items, dist.parse_page({}, max_n=1000)) == (["a", "b", "c", "d"], False)
    assert dist.parse_page({"n": "5000"}, max_n=100).n == 100
    assert dist.next_link("/v2/x/tags/list", 2, "b") == '</v2/x/tags/list?n=2&last=b>; rel="next"'
    with pytest.raises(dist.ApiError) as err:
        dist.parse_page({"n": "-1"}, max_n=10)
    assert err.value.code is dist.PAGINATION_NUMBER_INVALID


@given(st.lists(st.text(min_size=1, max_size=5), max_size=30, unique=True), st.integers(1, 10))
def test_walking_the_pages_lists_every_item_once(items: list[str], n: int) -> None:
    seen: list[str] = []
    last = None
    while True:
        page, more = dist.paginate(items, dist.Page(n, last))
        seen += page
        if not more:
            break
        last = page[-1]
    assert seen == sorted(items)


def test_ranges() -> None:
    assert dist.parse_range(None, 100) is None
    assert dist.parse_range("bytes=0-9", 100) == (0, 10)
    assert dist.parse_range("bytes=90-", 100) == (90, 100)
    assert dist.parse_range("bytes=-10", 100) == (90, 100)
    assert dist.parse_range("bytes=50-1000", 100) == (50, 100)
    assert dist.parse_range("bytes=0-1,5-6", 100) is None  # multi-part: the whole blob
    assert dist.parse_range("items=0-1", 100) is None
    with pytest.raises(dist.ApiError) as err:
        dist.parse_range("bytes=100-", 100)
    assert err.value.status == 416


@given(st.text(max_size=40), st.integers(0, 10_000))
def test_a_range_is_inside_the_blob_or_refused(header: str, size: int) -> None:
    try:
        got = dist.parse_range(header, size)
    except dist.ApiError as exc:
        assert exc.status == 416
        return
    if got is not None:
        start, end = got
        assert 0 <= start < end <= size


def test_accept_negotiation() -> None:
    offers = ["text/html", "application/json"]
    assert dist.preferred(None, offers) == "text/html"
    assert dist.preferred("application/json", offers) == "application/json"
    assert dist.preferred("text/html;q=0.5, application/json", offers) == "application/json"
    assert dist.preferred("text/*", offers) == "text/html"
    assert dist.preferred("*/*", offers) == "text/html"  # a browser's catch-all
    assert dist.preferred("image/png", offers) is None


def test_htpasswd_b_lines_are_read_and_others_refused(tmp_path: pytest.TempPathFactory) -> None:
    htpasswd = require_tool("htpasswd")
    out = subprocess.run(
        [htpasswd, "-nbB", "-C", "4", "alice", "secret"], capture_output=True, text=True, check=True
    ).stdout
    users = dist.parse_htpasswd(f"# users\n\n{out}", where="h")
    import bcrypt

    assert bcrypt.checkpw(b"secret", users["alice"].replace(b"$2y$", b"$2b$"))
    md5 = subprocess.run(
        [htpasswd, "-nbm", "bob", "x"], capture_output=True, text=True, check=True
    ).stdout
    # htpasswd -n ends its line with an empty one: bob is on line 3.
    with pytest.raises(UsageError, match=r"h:3: the password of 'bob' is not a bcrypt hash"):
        dist.parse_htpasswd(out + md5, where="h")
    with pytest.raises(UsageError, match="no users"):
        dist.parse_htpasswd("# nobody\n", where="h")


def test_basic_credentials() -> None:
    token = base64.b64encode(b"alice:pa:ss").decode()
    assert dist.parse_basic(f"Basic {token}") == ("alice", "pa:ss")
    assert dist.parse_basic("Bearer xyz") is None
    assert dist.parse_basic("Basic !!!") is None
    assert dist.parse_basic(None) is None


def test_referrer_descriptor_takes_artifact_type_then_config_type() -> None:
    d = Digest.parse(DIGEST)
    explicit = {"artifactType": "a/b", "config": {"mediaType": "c/d"}, "annotations": {"k": "v"}}
    assert dist.referrer_descriptor(explicit, media_type="m", digest=d, size=3) == {
        "mediaType": "m",
        "digest": DIGEST,
        "size": 3,
        "artifactType": "a/b",
        "annotations": {"k": "v"},
    }
    implicit = {"config": {"mediaType": "c/d"}}
    assert (
        dist.referrer_descriptor(implicit, media_type="m", digest=d, size=3)["artifactType"]
        == "c/d"
    )


def test_the_page_escapes_carried_names() -> None:
    from airbundle.adapters.serve_page import render_html

    hostile = '<script>alert("x")</script>'
    html = render_html(
        {
            "served": "oci:/srv",
            "address": "127.0.0.1:5000",
            "images": [
                {
                    "pull": f"h/{hostile}",
                    "source": hostile,
                    "digest": DIGEST,
                    "platforms": [],
                    "size": 1,
                }
            ],
            "repos": [
                {
                    "url": "u",
                    "refs": [{"ref": "refs/heads/x", "commit": "c" * 40, "subject": hostile}],
                }
            ],
            "history": [{"bundle": hostile, "signers": [hostile]}],
            "warnings": [hostile],
        }
    )
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
