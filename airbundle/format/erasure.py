"""The erasure code of parity volumes, `rs-cauchy-gf256-v1`: pure arithmetic.

A systematic Reed–Solomon code over GF(2^8) (polynomial x^8+x^4+x^3+x^2+1,
0x11d) with a Cauchy parity matrix. With k data shards d_0..d_{k-1} (byte
strings of one length), parity shard j is, byte by byte,

    p_j[o] = C[j][0]·d_0[o] ⊕ C[j][1]·d_1[o] ⊕ … ⊕ C[j][k-1]·d_{k-1}[o]

where C[j][i] = 1 / ((255 - j) ⊕ i), then every column i multiplied by
(255 ⊕ i) and every row j divided by its (new) first element, so that row 0
and column 0 are all ones: p_1 is the plain XOR of the data. Any square
submatrix of a Cauchy matrix is invertible, and scaling rows and columns by
non-zero constants keeps it so, so any k of the k + m shards give back the
others (k + m <= 256, which keeps every 255 - j apart from every i). The
matrix depends on neither k nor m: C's first k columns and m rows are the
same whatever the set's size.

Nothing here does I/O; `combine` is the portable kernel (bytes.translate
multiplies a whole buffer by a constant, Python's big integers XOR them),
and adapters/gfkernel.py has the fast one with the same results.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

SCHEME = "rs-cauchy-gf256-v1"
POLYNOMIAL = 0x11D
MAX_SHARDS = 256  # k + m: beyond this the Cauchy points would collide

Matrix = list[list[int]]
Buffer = bytes | bytearray | memoryview  # or anything else memoryview() takes


def _tables() -> tuple[list[int], list[int]]:
    exp = [0] * 510
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = exp[i + 255] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= POLYNOMIAL
    return exp, log


_EXP, _LOG = _tables()


def mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def inverse(a: int) -> int:
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return _EXP[255 - _LOG[a]]


def check_shape(k: int, m: int) -> None:
    if k < 1 or m < 1 or k + m > MAX_SHARDS:
        raise ValueError(f"{k} data and {m} parity shards: need k, m >= 1 and k + m <= 256")


def parity_matrix(k: int, m: int) -> Matrix:
    """The m x k matrix C above (row 0 and column 0 all ones)."""
    check_shape(k, m)
    rows = [[inverse((255 - j) ^ i) for i in range(k)] for j in range(m)]
    rows = [[mul(v, 255 ^ i) for i, v in enumerate(row)] for row in rows]
    return [[mul(v, inverse(row[0])) for v in row] for row in rows]


def generator_row(k: int, m: int, shard: int) -> list[int]:
    """Row of the (k + m) x k generator: an identity row for a data shard,
    C's row for a parity shard (shard k + j)."""
    if shard < k:
        return [int(i == shard) for i in range(k)]
    return parity_matrix(k, m)[shard - k]


def invert(matrix: Matrix) -> Matrix:
    """The inverse of a square matrix over GF(2^8); ValueError if singular."""
    n = len(matrix)
    rows = [list(row) + [int(i == j) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if rows[r][col]), None)
        if pivot is None:
            raise ValueError("singular matrix")
        rows[col], rows[pivot] = rows[pivot], rows[col]
        scale = inverse(rows[col][col])
        rows[col] = [mul(v, scale) for v in rows[col]]
        for r in range(n):
            factor = rows[r][col]
            if r != col and factor:
                rows[r] = [x ^ mul(factor, y) for x, y in zip(rows[r], rows[col], strict=True)]
    return [row[n:] for row in rows]


def rebuild_matrix(k: int, m: int, sources: Sequence[int], wanted: Sequence[int]) -> Matrix:
    """R such that shard w = ⊕_t R[w][t]·shard[sources[t]], for each wanted
    shard (data 0..k-1, parity k..k+m-1), from exactly k distinct sources."""
    if len(sources) != k or len(set(sources)) != k:
        raise ValueError(f"a rebuild needs {k} distinct source shards, got {list(sources)}")
    if not all(0 <= s < k + m for s in (*sources, *wanted)):
        raise ValueError("shard number out of range")
    decode = invert([generator_row(k, m, s) for s in sources])
    out = []
    for w in wanted:
        row = generator_row(k, m, w)
        out.append(
            [
                functools.reduce(int.__xor__, (mul(row[r], decode[r][t]) for r in range(k)), 0)
                for t in range(k)
            ]
        )
    return out


@functools.cache
def _times(c: int) -> bytes:
    return bytes(mul(c, v) for v in range(256))


def combine(coefficients: Sequence[int], sources: Sequence[Buffer], n: int) -> bytes:
    """⊕_t coefficients[t]·sources[t][:n], the portable kernel."""
    acc = 0
    for c, src in zip(coefficients, sources, strict=True):
        if c:
            data = bytes(memoryview(src)[:n])
            acc ^= int.from_bytes(data if c == 1 else data.translate(_times(c)), "little")
    return acc.to_bytes(n, "little")
