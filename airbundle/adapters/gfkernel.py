"""The GF(2^8) multiply-accumulate kernels that encode and rebuild parity.

`out[r] = ⊕_t M[r][t]·src[t]` over whole buffers, two ways with the same
results (tests/test_parity.py holds them to it):

* ISA-L (Intel's Intelligent Storage Acceleration Library, BSD-3, Debian
  package `libisal2`) through ctypes: `ec_init_tables` expands the matrix,
  `ec_encode_data` runs its SIMD kernel (AVX-512, AVX2, SSE or NEON, picked
  at run time). Measured here: 17-19 GiB of data per CPU-second at 10+1.
* The portable kernel of format/erasure.py (bytes.translate and big-integer
  XOR): about 0.1-0.6 GiB/s, used when libisal.so.2 is not installed, so a
  set with parity can always be read and repaired, only more slowly.

AIRBUNDLE_ERASURE_KERNEL=python forces the portable one (tests, bench).
docs/decisions/0013-parity-volumes.md says why this code and this library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from collections.abc import Sequence
from typing import Protocol, TypeAlias

from airbundle.format import erasure

KERNEL_ENV = "AIRBUNDLE_ERASURE_KERNEL"

# A stripe's bytes: a buffer of our own, or a view of a private mapping of the
# volume (adapters/parity.py), handed to ISA-L where it lies: no copy. ctypes
# takes an address only from a writable buffer; a private (copy-on-write)
# mapping is one, and nothing writes it.
Buffer: TypeAlias = bytearray | memoryview | mmap.mmap


class Prepared(Protocol):
    rows: int


class Kernel(Protocol):
    name: str

    def prepare(self, matrix: erasure.Matrix) -> Prepared: ...

    def apply(
        self, prepared: Prepared, sources: Sequence[Buffer], outs: Sequence[Buffer], n: int
    ) -> None:
        """outs[r][:n] = ⊕_t M[r][t]·sources[t][:n] (every buffer at least n long)."""


class _PyPrepared:
    def __init__(self, matrix: erasure.Matrix) -> None:
        self.matrix = matrix
        self.rows = len(matrix)


class PythonKernel:
    name = "python"

    def prepare(self, matrix: erasure.Matrix) -> Prepared:
        return _PyPrepared(matrix)

    def apply(
        self, prepared: Prepared, sources: Sequence[Buffer], outs: Sequence[Buffer], n: int
    ) -> None:
        assert isinstance(prepared, _PyPrepared)
        for row, out in zip(prepared.matrix, outs, strict=True):
            out[:n] = erasure.combine(row, [memoryview(b) for b in sources], n)


class _IsalPrepared:
    def __init__(self, rows: int, k: int, tables: ctypes.Array[ctypes.c_ubyte]) -> None:
        self.rows = rows
        self.k = k
        self.tables = tables


class IsalKernel:
    name = "isa-l"

    def __init__(self, library: str) -> None:
        lib = ctypes.CDLL(library)
        self._init = lib.ec_init_tables
        self._init.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self._init.restype = None
        self._encode = lib.ec_encode_data
        self._encode.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._encode.restype = None

    def prepare(self, matrix: erasure.Matrix) -> Prepared:
        rows, k = len(matrix), len(matrix[0])
        coefficients = (ctypes.c_ubyte * (rows * k))(*[v for row in matrix for v in row])
        tables = (ctypes.c_ubyte * (32 * rows * k))()  # ISA-L's expanded form
        self._init(k, rows, coefficients, tables)
        return _IsalPrepared(rows, k, tables)

    def apply(
        self, prepared: Prepared, sources: Sequence[Buffer], outs: Sequence[Buffer], n: int
    ) -> None:
        assert isinstance(prepared, _IsalPrepared)
        if len(sources) != prepared.k or len(outs) != prepared.rows:
            raise ValueError("buffers do not match the prepared matrix")
        if any(len(b) < n for b in (*sources, *outs)):
            raise ValueError(f"every buffer must hold {n} bytes")
        if n == 0:
            return
        # Views pin the buffers (a bytearray cannot be resized while exported).
        views = [(ctypes.c_char * n).from_buffer(b) for b in (*sources, *outs)]
        addresses = [ctypes.addressof(v) for v in views]
        src = (ctypes.c_void_p * prepared.k)(*addresses[: prepared.k])
        dst = (ctypes.c_void_p * prepared.rows)(*addresses[prepared.k :])
        self._encode(n, prepared.k, prepared.rows, prepared.tables, src, dst)
        del views


def find_isal() -> str | None:
    return ctypes.util.find_library("isal")


def load_kernel(name: str | None = None) -> Kernel:
    """ISA-L when installed (or asked for), else the portable kernel."""
    wanted = name or os.environ.get(KERNEL_ENV, "")
    if wanted == "python":
        return PythonKernel()
    library = find_isal()
    if library is None:
        if wanted == "isa-l":
            raise OSError("libisal.so.2 is not installed (Debian: apt-get install libisal2)")
        return PythonKernel()
    return IsalKernel(library)
