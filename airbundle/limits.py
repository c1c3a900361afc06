"""Safety limits and sizes in one place, so that no size or count is a literal in code.

One frozen `Limits` is passed down from the ops functions; `DEFAULT_LIMITS` is
what the CLI uses (no command-line option changes them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Threads that read a bundle in parallel: one per core, at most 8 (sha256 and
# zstd each keep one core busy).
_CORES = max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class Limits:
    # -- documents read from media, state or the network ------------------------
    # The signed manifest is read into memory before it is parsed; a hostile
    # bundle must not make us read a gigabyte first.
    max_manifest_bytes: int = 64 * 1024 * 1024
    max_signature_bytes: int = 16 * 1024
    max_signatures: int = 64
    # OCI manifests and indexes are JSON documents held in memory.
    max_oci_manifest_bytes: int = 4 * 1024 * 1024
    # Indexes nested in indexes, below an image's root.
    max_index_depth: int = 4
    # zstd: refuse frames that ask for a window larger than this before any
    # allocation happens (zstd's own default cap is 128 MiB).
    max_zstd_window_bytes: int = 1 << 27
    # Depth of nesting accepted in any JSON document we parse...
    max_json_depth: int = 64
    # ...and in the flat ones: volume index, inventory, lock file.
    max_flat_json_depth: int = 8
    # Maximum accepted length of a tar member path.
    max_path_length: int = 1024
    # Spec files are small documents written by hand (also lock files); YAML
    # aliases must not expand them beyond this many values or levels.
    max_spec_bytes: int = 4 * 1024 * 1024
    max_spec_nodes: int = 100_000
    max_spec_depth: int = 64
    # Git refs in one repository entry.
    max_refs_per_repo: int = 100_000
    # A git bundle's header (refs and prerequisites) before its pack.
    max_git_bundle_header_bytes: int = 1 << 20
    # Volume sets: the index, its volumes and its signatures.
    max_volume_index_bytes: int = 4 * 1024 * 1024
    max_volumes: int = 9999
    max_volume_index_signatures: int = 64
    # Parity volumes are named NAME.p01 to NAME.p99; the code (GF(2^8))
    # allows at most 256 data and parity volumes together.
    max_parity_volumes: int = 99
    # An inventory lists every blob of a target.
    max_inventory_bytes: int = 256 * 1024 * 1024
    # The import state keeps this many history entries.
    max_state_history: int = 1000
    # -- files read whole (adapters/fsutil.read_regular): the size is checked
    # before a byte is read, and the read itself is capped at the same number.
    # .volumes.sig: at most 64 armored signatures of at most 16 KiB each.
    max_volume_signatures_bytes: int = 64 * 16 * 1024
    # A state file keeps 1,000 history entries of well under 4 KiB each.
    max_state_bytes: int = 16 * 1024 * 1024
    # A lock file pins digests and commits: up to 100,000 refs per repo.
    max_lock_bytes: int = 64 * 1024 * 1024
    # An import report lists each image and ref imported.
    max_report_bytes: int = 64 * 1024 * 1024
    # Trust files (public keys, allowed_signers): ~100 bytes per key.
    max_trust_file_bytes: int = 4 * 1024 * 1024
    # Private keys, passphrase files, registry credential files.
    max_key_file_bytes: int = 1024 * 1024
    # A sign journal holds two copies of a prefix region and its own header.
    max_sign_journal_bytes: int = 2 * (64 + 1) * 1024 * 1024 + 64 * 1024
    # The image scan: YAML files read (larger ones are skipped), nesting walked.
    max_scanned_file_bytes: int = 4 * 1024 * 1024
    max_scan_depth: int = 100
    # Vetting (export --policy, --vet-command; import --policy): the policy
    # file and each key it names; an upstream signature's payload and how many
    # signatures one image may carry (each is kept in the signed manifest).
    max_policy_bytes: int = 1 << 20
    max_public_key_bytes: int = 64 << 10
    max_signature_payload_bytes: int = 64 << 10
    max_image_signatures: int = 16
    # Vet commands run at once; the stdout kept as an image's report (the rest
    # is read and dropped, the report marked as cut); the end of stderr kept
    # for the message when a command fails.
    vet_workers: int = 2
    max_vet_report_bytes: int = 1 << 20
    max_vet_stderr_bytes: int = 8 << 10
    # -- charts and files -----------------------------------------------------------
    # A packaged chart (.tgz) is held in memory; what it unpacks to, its entries
    # and its nested dependency charts are bounded too (a gzip bomb, a tar of a
    # million files, charts vendored in charts vendored in ...).
    max_chart_bytes: int = 64 << 20
    max_chart_unpacked_bytes: int = 256 << 20
    max_chart_entries: int = 20_000
    max_chart_depth: int = 4
    # YAML values, aliases expanded, in a Chart.yaml, a values.yaml, one chart's
    # entries in a repository index, or the index.yaml import writes.
    max_chart_yaml_nodes: int = 1_000_000
    max_chart_index_nodes: int = 5_000_000
    # A chart repository's index.yaml (some list every version of thousands of charts).
    max_chart_index_bytes: int = 128 << 20
    # Redirects followed by one HTTP download (a chart, a file by URL).
    max_redirects: int = 5
    # Files carried from one `files:` folder.
    max_folder_files: int = 100_000
    # -- answers from servers -----------------------------------------------------
    # A registry's repository or tag listing: names asked for per page, and
    # the most bytes one page may take.
    registry_page_entries: int = 1000
    max_registry_listing_bytes: int = 64 << 20
    # A token server's answer; the reason in a registry's refusal.
    max_token_answer_bytes: int = 1 << 20
    max_registry_error_bytes: int = 1 << 16
    # A git server's ref advertisement or push report.
    max_git_answer_bytes: int = 64 << 20
    # A pack pushed to a git:// server while its objects are checked here keeps
    # this many of its last bytes back until the check passes (the server can
    # finish nothing without the pack's trailing checksum).
    git_push_held_bytes: int = 64 << 10
    # ... for packs of at least this size (below it the overlap gains nothing
    # worth a connection held open while the images are published).
    git_push_overlap_min_bytes: int = 8 << 20
    # `probe`: path components asked about below a registry's prefix (GitLab
    # takes a handful, Quay organizations two, most registries any).
    probe_max_depth: int = 8
    # -- streaming and concurrency ------------------------------------------------
    # Read/write buffer for streaming blobs.
    io_chunk_bytes: int = 1 << 20
    # Room kept in a bundle's prefix for approval signatures added later by `sign`.
    reserved_signatures: int = 16
    reserved_signature_bytes: int = 1024
    # Export reads blobs up to this size whole, this many at once, at most
    # `small_blob_window` ahead of the writer.
    small_blob_bytes: int = 1 << 20
    small_blob_workers: int = 4
    small_blob_window: int = 16
    # Export resolves this many images at once (round trips overlap).
    planning_workers: int = 8
    # Import: manifests, tags and existence checks in parallel; blobs up to
    # `async_upload_bytes` uploaded in the background by `async_uploads`
    # workers (twice as many queued); chunks read ahead of a large upload.
    import_workers: int = 8
    async_upload_bytes: int = 1 << 20
    async_uploads: int = 4
    prefetch_chunks: int = 4
    # A bundle with a signed seek table, of at least `parallel_read_min_bytes`,
    # is read by `read_workers` threads in sections from their own offsets
    # (verify, import: ops/sections.py); import has `import_streams` blob
    # uploads in flight. Measured in docs/performance.md.
    read_workers: int = _CORES
    parallel_read_min_bytes: int = 16 << 20
    import_streams: int = 3
    # Parity: each volume is read and written in stripes of at most
    # `parity_stripe_bytes`, all of a set's stripes together in at most
    # `parity_memory_bytes` (peak memory stays flat whatever the volume size);
    # a reader keeps this many rebuilt stripes for the next reads.
    # `parity_workers` threads compute stripes side by side (ISA-L and the
    # reads run without the GIL), one more stripe is hashed meanwhile: each
    # holds its share of `parity_memory_bytes`. Measured in docs/performance.md.
    parity_stripe_bytes: int = 4 << 20
    parity_memory_bytes: int = 32 << 20
    parity_cached_stripes: int = 4
    parity_workers: int = 2
    # A blob below this goes up in one PUT; twice this of a streamed upload is
    # held in memory for a resend (per upload in flight: 8 MiB here cost 30-35
    # MiB of import's peak RSS over 4 MiB with three streams, docs/performance.md).
    upload_buffer_bytes: int = 4 << 20
    # Compressible members are cut into independent zstd frames of this much
    # tar stream each (random access decodes at most one such frame to reach
    # any byte); memory per compression worker scales with it. Measured in
    # docs/performance.md: ratio and speed against 1, 2, 4 and 8 MiB.
    seek_frame_bytes: int = 4 << 20
    # A frame whose header declares at most this much content is gathered and
    # decoded in one call (raw frames pass without a decoder); larger ones, or
    # frames of unknown size (bundles from before the seek table), are decoded
    # one 128 KiB block at a time.
    max_frame_buffer_bytes: int = 9 << 20
    # The seek table of a bundle's content region (8 bytes per frame).
    max_seek_table_bytes: int = 64 << 20
    # The frame index a bundle without a seek table gets in the cache folder.
    max_frame_index_bytes: int = 256 << 20
    # -- serve ----------------------------------------------------------------------
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
    # serve --bundle: requests waiting for a member's first hash or a repo's
    # indexing at once (most of them wait for one another: each member is
    # hashed once, by the first request for it).
    max_check_threads: int = 16


DEFAULT_LIMITS = Limits()
