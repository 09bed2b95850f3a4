"""The log identity index's sidecar format: a binary fuse filter over keyed value hashes.

Why a module of its own: `identity_index` decides what goes into a sidecar (which values, how
they are normalised and hashed, how many bytes a sidecar may take) and where sidecars live; this
module only stores a set of 64-bit hashes compactly and answers "may it hold this one?" with no
false negatives. No plain identity ever reaches it (R20: the hashes are keyed upstream).

Format (VERSION 2): a header (magic `CJLI`, version, the 8-byte stamp of the object state it was
built for, the split), then two binary fuse filters (Graf and Lemire, 2022), of `bits` and
`bits + 1` fingerprint bits per cell, the hash's low 16 bits choosing which holds a value.
Version 1 was a Bloom filter at 6 bits per value; its sidecars do not decode, so they are stale.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

MAGIC = b"CJLI"
VERSION = 2  # 1: a Bloom filter at 6 bits per value; such sidecars are stale and rebuilt
MIN_BITS = 2  # 25% per value: only on objects too dense for their budget
MAX_BITS = 8
ARITY = 4  # cells per value: a 4-wise binary fuse filter needs the least space of its kind
SPLIT = 1 << 16  # resolution of the share of values that get one bit more
_MASK64 = (1 << 64) - 1
_SEED = 0x9E3779B97F4A7C15
_FP_SALT = 0x632BE59BD9B4E019
_HEAD = struct.Struct(">4sB8sH")  # magic, version, stamp, split
_PART = struct.Struct(">BBBII")  # bits, log2 segment length, attempt, segment count, data bytes


def _mix(x: int) -> int:
    """A 64-bit finaliser (MurmurHash3's): spreads a reseeded hash over every bit."""
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK64
    return x ^ (x >> 33)


def _mix_np(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)  # wraps modulo 2**64, as `_mix` masks
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def _factor(n: int) -> float:
    """Cells per value to try first: about the fewest at which peeling nearly always succeeds
    (Graf and Lemire's sizing; small sets need more). A failure costs another seed, and after
    three, 5% more cells."""
    return max(1.075, 0.77 + 0.305 * math.log(600_000) / math.log(max(n, 3)))


def _layout(n: int, factor: float) -> tuple[int, int]:
    """(log2 segment length, segment count) for `n` values at `factor` cells per value."""
    seg_bits = max(2, min(18, math.floor(math.log(max(n, 2)) / math.log(2.91) - 0.5)))
    length = 1 << seg_bits
    return seg_bits, max(1, -(-round(n * factor) // length) - (ARITY - 1))


def _cells_bytes(n: int, bits: int) -> int:
    if n == 0:
        return 0
    seg_bits, seg_count = _layout(n, _factor(n))
    return -(-((seg_count + ARITY - 1) << seg_bits) * bits // 8) + 1


def width_for(n: int, budget_bytes: float) -> float:
    """Fingerprint bits per value (fractional: a share of the values gets one bit more) so that
    the sidecar of `n` values takes about `budget_bytes`, between MIN_BITS and MAX_BITS."""
    if n == 0:
        return float(MIN_BITS)
    room = budget_bytes - _HEAD.size - 2 * _PART.size
    width = min(float(MAX_BITS), max(float(MIN_BITS), 8 * room / (n * _factor(n))))
    while width > MIN_BITS and _estimate(n, width) > room:  # the two parts' own overheads
        width = max(float(MIN_BITS), width - 0.05)
    return width


def _shares(width: float) -> tuple[int, int, int]:
    """(bits, bits + 1, split): values whose hash's low 16 bits are below split get bits + 1."""
    bits = min(MAX_BITS, int(width))
    split = 0 if bits == MAX_BITS else round((width - bits) * SPLIT)
    return bits, bits + 1, min(split, SPLIT - 1)


def _estimate(n: int, width: float) -> int:
    lo, hi, split = _shares(width)
    n_hi = round(n * split / SPLIT)
    return _cells_bytes(n - n_hi, lo) + _cells_bytes(n_hi, hi)


@dataclass(frozen=True)
class _Fuse:
    """One 4-wise binary fuse filter (Graf and Lemire, 2022): each value maps to ARITY cells of
    `bits` bits, one in each of ARITY consecutive segments, whose XOR is its fingerprint. A
    value not in the set passes with probability 2**-bits."""

    bits: int
    seg_bits: int
    seg_count: int
    attempt: int  # which reseeding of the hashes peeled (0 nearly always)
    data: bytes  # (seg_count + ARITY - 1) << seg_bits cells, little-endian, one spare byte

    @classmethod
    def of(cls, keys: np.ndarray, bits: int) -> _Fuse:
        n = len(keys)
        if n == 0:
            return cls(bits, 0, 0, 0, b"")
        factor = _factor(n)
        attempt = 0
        while True:
            seg_bits, seg_count = _layout(n, factor)
            cells = _peel(keys, attempt, bits, seg_bits, seg_count)
            if cells is not None:
                return cls(bits, seg_bits, seg_count, attempt, _pack(cells, bits))
            attempt += 1
            if attempt % 3 == 0:  # three seeds failed: this layout is too tight for this set
                factor *= 1.05
            if attempt > 250:  # unreachable: at 12 times the cells every set peels
                raise RuntimeError("binary fuse filter construction did not converge")

    def contains(self, key: int) -> bool:
        if not self.data:
            return False
        h = _mix(key ^ ((_SEED * (self.attempt + 1)) & _MASK64))
        length = 1 << self.seg_bits
        mask = length - 1
        h0 = ((h >> 32) * (self.seg_count * length)) >> 32
        data, bits = self.data, self.bits
        acc = _mix((h + _FP_SALT) & _MASK64) >> (64 - bits)
        for i, shift in enumerate((0, 18, 0, 36)):
            cell = h0 if i == 0 else (h0 + i * length) ^ ((h >> shift) & mask)
            off = cell * bits
            acc ^= int.from_bytes(data[off >> 3 : (off >> 3) + 2], "little") >> (off & 7)
        return acc & ((1 << bits) - 1) == 0


@dataclass(frozen=True)
class Sidecar:
    """A filter over the object's value hashes: two binary fuse filters, of `bits` and
    `bits + 1` fingerprint bits, the value hash's low 16 bits choosing which (`split`).

    Why: for a false-positive rate of 2**-b a Bloom filter (version 1) needs 1.44*b bits per
    value, a fuse filter 1.08*b to 1.2*b (more for small sets): the same 6% at 4.3 to 4.8 bits
    per value instead of 6. Why two widths: the sidecar's size is set by a budget (a share of
    the object's gzip bytes, `identity_index.SIZE_BUDGET`, `width_for`), and whole bits would
    waste up to a bit per value of it. Why not the sorted hashes themselves: 8 bytes per value,
    about 29% of the gzip log bytes (nearly every line carries its own e-mail, phone and
    contact id).

    `stamp` ties the sidecar to one state of the object: a keyed hash of its ETag and size, of
    the store's identity fields and of the index key. Another stamp means stale (`LogIndex.read`).
    """

    stamp: bytes
    split: int
    parts: tuple[_Fuse, _Fuse]

    @classmethod
    def of(cls, stamp: bytes, hashes: Iterable[bytes], width: float = 4.0) -> Sidecar:
        """The filter over 8-byte value hashes (`value_hash`), `width` bits per value."""
        keys = np.unique(np.frombuffer(b"".join(hashes), dtype=">u8").astype(np.uint64))
        lo, hi, split = _shares(width)
        upper = (keys & np.uint64(SPLIT - 1)) < np.uint64(split)
        return cls(stamp, split, (_Fuse.of(keys[~upper], lo), _Fuse.of(keys[upper], hi)))

    @property
    def false_positive_rate(self) -> float:
        """The chance that a value not in the object passes."""
        share = self.split / SPLIT
        lo, hi = self.parts
        return (1 - share) * 2.0**-lo.bits + share * 2.0**-hi.bits

    def contains(self, h: bytes) -> bool:
        key = int.from_bytes(h, "big")
        return self.parts[(key & (SPLIT - 1)) < self.split].contains(key)

    def encode(self) -> bytes:
        out = [_HEAD.pack(MAGIC, VERSION, self.stamp, self.split)]
        for p in self.parts:
            out.append(_PART.pack(p.bits, p.seg_bits, p.attempt, p.seg_count, len(p.data)))
        return b"".join(out + [p.data for p in self.parts])

    @classmethod
    def decode(cls, data: bytes) -> Sidecar | None:
        """The sidecar, or None when it is not one this version can read."""
        try:
            magic, version, stamp_, split = _HEAD.unpack_from(data)
            if magic != MAGIC or version != VERSION:
                return None
            heads = [_PART.unpack_from(data, _HEAD.size + i * _PART.size) for i in range(2)]
        except struct.error:
            return None
        at = _HEAD.size + 2 * _PART.size
        parts = []
        for bits, seg_bits, attempt, seg_count, size in heads:
            body = data[at : at + size]
            at += size
            cells = (seg_count + ARITY - 1) << seg_bits if size else 0
            if not 1 <= bits <= MAX_BITS + 1 or len(body) != size:
                return None
            if size and size != -(-cells * bits // 8) + 1:
                return None
            parts.append(_Fuse(bits, seg_bits, seg_count, attempt, body))
        if at != len(data):
            return None
        return cls(stamp_, split, (parts[0], parts[1]))


def _peel(
    keys: np.ndarray, attempt: int, bits: int, seg_bits: int, seg_count: int
) -> np.ndarray | None:
    """The filter's cells for `keys` (unique uint64), or None when this seed does not peel.

    Peeling in rounds, vectorised: every cell that holds exactly one value gives that value
    its own cell and removes it from its other cells. Values peeled in one round never use
    each other's own cells, so assigning fingerprints in reverse round order, a round at a
    time, makes each value's ARITY cells XOR to its fingerprint (`_Fuse.contains` computes the
    same cells and fingerprint in plain Python)."""
    n = len(keys)
    length = 1 << seg_bits
    size = (seg_count + ARITY - 1) * length
    h = _mix_np(keys ^ np.uint64((_SEED * (attempt + 1)) & _MASK64))
    h0 = ((h >> np.uint64(32)) * np.uint64(seg_count * length)) >> np.uint64(32)
    mask = np.uint64(length - 1)
    pos = np.empty((ARITY, n), dtype=np.int64)
    pos[0] = h0
    for i, shift in enumerate((18, 0, 36), start=1):
        pos[i] = (h0 + np.uint64(i * length)) ^ ((h >> np.uint64(shift)) & mask)
    flat = pos.ravel()
    count = np.bincount(flat, minlength=size)
    xor = np.zeros(size, dtype=np.int64)
    np.bitwise_xor.at(xor, flat, np.tile(np.arange(n, dtype=np.int64), ARITY))
    rounds: list[tuple[np.ndarray, np.ndarray]] = []
    peeled = 0
    # Deduplication by "last write wins" marks instead of sorting: a value alone in two cells
    # is peeled from one of them, a cell touched twice is queued once.
    owner = np.full(n, -1, dtype=np.int64)
    mark = np.full(size, -1, dtype=np.int64)
    queue = np.flatnonzero(count == 1)
    while queue.size:
        alone = xor[queue]
        owner[alone] = queue
        first = owner[alone] == queue
        key_ids = alone[first]
        rounds.append((key_ids, queue[first]))
        peeled += key_ids.size
        touched = pos[:, key_ids].ravel()
        np.subtract.at(count, touched, 1)
        np.bitwise_xor.at(xor, touched, np.tile(key_ids, ARITY))
        order = np.arange(touched.size)
        mark[touched] = order
        touched = touched[mark[touched] == order]
        queue = touched[count[touched] == 1]
    if peeled != n:
        return None
    fps = (_mix_np(h + np.uint64(_FP_SALT)) >> np.uint64(64 - bits)).astype(np.uint8)
    cells = np.zeros(size, dtype=np.uint8)
    for key_ids, own in reversed(rounds):
        value = fps[key_ids]
        for i in range(ARITY):
            value = value ^ cells[pos[i, key_ids]]  # its own cell is still 0
        cells[own] = value
    return cells


def _pack(cells: np.ndarray, bits: int) -> bytes:
    """`bits` low bits of each cell, little-endian bit order, and one spare byte so that a
    cell can always be read from two bytes."""
    if bits == 8:
        return cells.tobytes() + b"\0"
    unpacked = np.unpackbits(cells[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(unpacked.ravel(), bitorder="little").tobytes() + b"\0"
