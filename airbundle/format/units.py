"""Sizes as a person reads them: IEC units (powers of 1024), one decimal.

One convention everywhere airbundle prints a size for a person (`26.3 MiB`):
the same numbers `ls -lh`, `du -h` and tqdm's bars show. Raw byte counts stay
in every --json output and in error messages where an exact count is the
point (a member one byte short).
"""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: int) -> str:
    """`0 B`, `1023 B`, `1.0 KiB`, `26.3 MiB`: below 1 KiB exact bytes, above one
    decimal of the largest unit that keeps the number under 1024 (after rounding:
    1,048,575 bytes is `1.0 MiB`, never `1024.0 KiB`)."""
    if n < 0:
        raise ValueError(f"a size cannot be negative: {n}")
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in _UNITS[:-1]:
        if round(value, 1) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {_UNITS[-1]}"
