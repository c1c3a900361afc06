"""Dataset sizes: what each ``--size`` generates. Everything is derived from these
numbers and fixed seeds, so a cache built from the same plan is byte-identical."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Fractions of the single image's total, largest first (a realistic spread).
_SINGLE_SPLIT = (0.30, 0.22, 0.16, 0.12, 0.08, 0.06, 0.04, 0.02)


@dataclass(frozen=True)
class LayerPlan:
    key: str  # unique per distinct layer; shared layers share their key (and bytes)
    size: int  # target compressed (gzip) size in bytes
    # "text": tar of pseudo-words, gzip -6 (realistic, ~20 MiB/s to make);
    # "random": a gzip magic then random bytes (as incompressible and stored
    # the same way by both sides; ~1 GiB/s to make: for the scale sets).
    kind: str = "text"


@dataclass(frozen=True)
class ImagePlan:
    repo: str  # repository path in the registries, e.g. bench/shared/app-03
    tag: str
    ref: str  # ref name inside the dataset's OCI layout
    layers: tuple[LayerPlan, ...]


@dataclass(frozen=True)
class GitPlan:
    commits: int
    history_bytes: int  # total size of the generated (incompressible) blobs
    # "random": one file of random bytes replaced per commit, linear history.
    # "text": a source tree of small text files, a few edited per commit, topic
    # branches merged back, annotated tags: hundreds of thousands of small
    # objects, as real histories have (history_bytes is then ignored).
    shape: str = "random"


@dataclass(frozen=True)
class SizePlan:
    name: str
    single: tuple[ImagePlan, ...]  # (a) one multi-layer image
    shared: tuple[ImagePlan, ...]  # (b) images sharing base layers
    small: tuple[ImagePlan, ...]  # (c) many small images
    git: GitPlan  # (d) a repository with a long history
    reps: int  # default repetitions
    dd_mib: int  # size of the disk throughput probe
    probe_mib: int  # at most this much layer data for the zstd probes

    def image_sets(self) -> dict[str, tuple[ImagePlan, ...]]:
        return {"single": self.single, "shared": self.shared, "small": self.small}

    def fingerprint(self) -> str:
        from bench import BENCH_VERSION

        plan = asdict(self)
        plan.pop("reps")  # the data does not depend on it (dd_mib and probe_mib are in)
        # Fields added later, at their defaults, leave earlier caches valid.
        for images in ("single", "shared", "small"):
            for image in plan[images]:
                for layer in image["layers"]:
                    if layer["kind"] == "text":
                        del layer["kind"]
        if plan["git"]["shape"] == "random":
            del plan["git"]["shape"]
        doc = {"version": BENCH_VERSION, "plan": plan}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _single(total: int, layers: int, kind: str = "text") -> tuple[ImagePlan, ...]:
    split = _SINGLE_SPLIT[:layers]
    scale = sum(split)
    plans = tuple(
        LayerPlan(f"single-{i}", int(total * f / scale), kind) for i, f in enumerate(split)
    )
    return (ImagePlan("bench/single/app", "1.0", "app", plans),)


def _shared(per_image: int, images: int, kind: str = "text") -> tuple[ImagePlan, ...]:
    """Two base layers shared by every image (5/8 of each image), then two of its own."""
    base = (
        LayerPlan("shared-base-0", per_image * 3 // 8, kind),
        LayerPlan("shared-base-1", per_image * 2 // 8, kind),
    )
    out = []
    for i in range(images):
        own = (
            LayerPlan(f"shared-app{i:02d}-0", per_image * 2 // 8, kind),
            LayerPlan(f"shared-app{i:02d}-1", per_image * 1 // 8, kind),
        )
        out.append(ImagePlan(f"bench/shared/app-{i:02d}", "1.0", f"app-{i:02d}", base + own))
    return tuple(out)


def _small(images: int) -> tuple[ImagePlan, ...]:
    rng = random.Random(f"small-images-{images}")  # noqa: S311 - seeded data, not crypto
    out = []
    for i in range(images):
        layers = tuple(
            LayerPlan(f"small-svc{i:03d}-{k}", rng.randrange(90 * KiB, 110 * KiB)) for k in range(3)
        )
        out.append(
            ImagePlan(
                f"bench/small/svc-{i:04d}" if images > 999 else f"bench/small/svc-{i:03d}",
                "1.0",
                f"svc-{i:03d}",
                layers,
            )
        )
    return tuple(out)


SIZES: dict[str, SizePlan] = {
    "tiny": SizePlan(
        "tiny",
        single=_single(2 * MiB, 4),
        shared=_shared(1 * MiB, 4),
        small=_small(5),
        git=GitPlan(50, 512 * KiB),
        reps=1,
        dd_mib=64,
        probe_mib=2,
    ),
    "small": SizePlan(
        "small",
        single=_single(64 * MiB, 8),
        shared=_shared(256 * MiB // 10, 10),
        small=_small(30),
        git=GitPlan(2_000, 21 * MiB),
        reps=3,
        dd_mib=512,
        probe_mib=64,
    ),
    "full": SizePlan(
        "full",
        single=_single(1 * GiB, 8),
        shared=_shared(512 * MiB, 10),
        small=_small(300),
        git=GitPlan(20_000, 210 * MiB),
        reps=3,
        dd_mib=2048,
        probe_mib=256,
    ),
}
# Scale (issue 14): a 1 GiB image and a shared set of 20 images of 1 GiB each
# (20 GiB referenced, 8.1 GiB unique), both of random layers so that RSS and
# time per GiB compare like with like; 2,000 small images; a history of
# realistic shape. Not part of `full`: it needs ~50 GB of disk and ~1 h.
SIZES["scale"] = SizePlan(
    "scale",
    single=_single(1 * GiB, 8, "random"),
    shared=_shared(1 * GiB, 20, "random"),
    small=_small(2_000),
    git=GitPlan(40_000, 0, "text"),
    reps=2,
    dd_mib=2048,
    probe_mib=256,
)
# The largest shared set this machine's free disk allows beside a full run's
# scratch (issue 14 asks for 20 GiB; `scale` needs ~50 GB): the same 1 GiB
# image of random layers as `scale` and 10 images of 1 GiB sharing 5/8 of
# their bytes (10 GiB referenced, 4.4 GiB unique), to compare RSS and time
# per GiB with the 1 GiB image. Its small and git sets are `tiny`'s.
SIZES["scale10"] = SizePlan(
    "scale10",
    single=_single(1 * GiB, 8, "random"),
    shared=_shared(1 * GiB, 10, "random"),
    small=_small(5),
    git=GitPlan(50, 512 * KiB),
    reps=2,
    dd_mib=2048,
    probe_mib=256,
)
