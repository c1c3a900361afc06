"""Benchmark harness: airbundle against the hand-built peer pipeline.

The peer pipeline is what users script without airbundle: ``skopeo copy`` per image
into one OCI layout, ``git clone --mirror`` + ``git bundle create``, then
``tar | zstd``; on the other side ``zstd -d | tar -x``, ``skopeo copy`` per image
and ``git push --mirror``. Both run side by side, alternating, on the same data
(generated deterministically and cached) against real registries and git daemons
on loopback (``tests/support/``).

Run ``python -m bench --help``; docs/performance.md explains the results.
"""

from __future__ import annotations

__all__ = ["BENCH_VERSION"]

# Bumped whenever generated data changes shape, so stale caches are rebuilt.
BENCH_VERSION = 1
