"""Safety limits in one place, so that no size or count is a literal in code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    # The signed manifest is read into memory before it is parsed; a hostile
    # bundle must not make us read a gigabyte first.
    max_manifest_bytes: int = 64 * 1024 * 1024
    max_signature_bytes: int = 16 * 1024
    max_signatures: int = 64
    # OCI manifests and indexes are JSON documents held in memory.
    max_oci_manifest_bytes: int = 4 * 1024 * 1024
    # zstd: refuse frames that ask for a window larger than this before any
    # allocation happens (zstd's own default cap is 128 MiB).
    max_zstd_window_bytes: int = 1 << 27
    # Depth of nesting accepted in any JSON document we parse.
    max_json_depth: int = 64
    # Maximum accepted length of a tar member path.
    max_path_length: int = 1024
    # Spec files are small documents written by hand.
    max_spec_bytes: int = 4 * 1024 * 1024
    # Git refs in one repository entry.
    max_refs_per_repo: int = 100_000
    # Read/write buffer for streaming blobs.
    io_chunk_bytes: int = 1 << 20
    # zstd multi-threaded job size: memory per compression worker scales with it.
    zstd_job_bytes: int = 2 << 20
    # serve: most entries one tags/list or _catalog page returns (a larger `n`
    # gets this many and a Link to the next page).
    max_page_entries: int = 1000
    # serve: successful Basic logins remembered (bcrypt costs ~0.1 s per check).
    max_auth_cache_entries: int = 1024
    # serve: a git fetch's request body (wants and haves); far above any real one.
    max_git_request_bytes: int = 64 << 20
    # serve: an htpasswd file is a handful of lines.
    max_htpasswd_bytes: int = 1 << 20
    # serve: blob sends running at once (threads blocked on slow clients included).
    max_send_threads: int = 64
    # serve: refs listed per repository on the page at /.
    max_page_refs: int = 200
    # Room kept in a bundle's prefix for approval signatures added later by `sign`.
    reserved_signatures: int = 16
    reserved_signature_bytes: int = 1024
    # A registry's repository or tag listing: names asked for per page, and
    # the most bytes one page may take.
    registry_page_entries: int = 1000
    max_registry_listing_bytes: int = 64 << 20
    # Export reads blobs up to this size whole, a few ahead of the writer.
    small_blob_bytes: int = 1 << 20


DEFAULT_LIMITS = Limits()
