"""The engine's KV memory: one buffer of num_blocks x block_bytes that P/D pulls copy.

Block contents are derived from the block's prefix hash, so any engine can tell what a
correct block holds, and a pull is checked with a checksum over the bytes it moved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash


class KVArena:
    def __init__(self, num_blocks: int, block_bytes: int) -> None:
        self.block_bytes = block_bytes
        self.buf = np.zeros(max(num_blocks * block_bytes, 8), dtype=np.uint8)
        self.seeds: list[int | None] = [None] * num_blocks  # what each block holds, if known

    def fill(self, block: int, seed: int) -> None:
        """Write a block's content for `seed`; a no-op when it already holds that."""
        if not self.block_bytes or self.seeds[block] == seed:
            return
        self.seeds[block] = seed
        bb = self.block_bytes
        view = self.buf[block * bb : (block + 1) * bb]
        words = bb // 8
        view[: words * 8].view(np.uint64)[:] = seed
        view[words * 8 :] = np.frombuffer(seed.to_bytes(8, "little"), dtype=np.uint8)[: bb % 8]

    def overwritten(self, blocks: Sequence[int]) -> None:
        """Bytes arrived from elsewhere: forget what these blocks were known to hold."""
        for b in blocks:
            self.seeds[b] = None

    def view(self, block: int) -> memoryview:
        bb = self.block_bytes
        return self.buf[block * bb : (block + 1) * bb].data

    def checksum(self, blocks: Sequence[int]) -> int:
        h = xxhash.xxh3_64()  # the fastest of the family: verification must not dominate a pull
        bb = self.block_bytes
        for b in blocks:
            h.update(self.buf[b * bb : (b + 1) * bb].data)
        return h.intdigest()

    def regions(self, blocks: Sequence[int]) -> list[tuple[int, int, int]]:
        """(address, length, device) of each block, as NIXL describes memory."""
        base = self.buf.ctypes.data
        return [(base + b * self.block_bytes, self.block_bytes, 0) for b in blocks]
