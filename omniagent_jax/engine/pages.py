"""Host-side bookkeeping of the paged KV cache: the page pool and the prefix cache.

Pages are fixed-size slots of `page_size` tokens in one device array per layer. Page 0 is the
reserved null page: padding writes land there and it is never read unmasked. A page is *free*
(on the free list), *referenced* (refcount > 0: in some sequence's page table), or *cached*
(refcount 0 but registered in the prefix cache, evictable in LRU order).

The prefix cache keys every full page by a chained hash of its token ids, the content hash of the
media behind any placeholder tokens in it, and its rope positions, so identical `<|IMAGE|>` runs with
different pixels never collide and a page is reused only where its KV would be identical.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence

import numpy as np

NULL_PAGE = 0


class OutOfPages(RuntimeError):
    """No free or evictable page is left."""


class PagePool:
    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 2:
            raise ValueError("the page pool needs at least 2 pages (page 0 is the reserved null page)")
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self.num_pages = num_pages
        self.page_size = page_size
        self.refcount = np.zeros(num_pages, np.int32)
        self.free: collections.deque[int] = collections.deque(range(1, num_pages))
        self.prefix = PrefixCache()

    @property
    def num_free(self) -> int:
        """Pages that can be handed out now: free ones plus unreferenced cached ones."""
        return len(self.free) + len(self.prefix.evictable)

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def allocate(self, n: int) -> list[int]:
        if n > self.num_free:
            raise OutOfPages(f"need {n} pages, {self.num_free} available")
        pages = []
        for _ in range(n):
            page = self.free.popleft() if self.free else self.prefix.evict()
            self.refcount[page] = 1
            pages.append(page)
        return pages

    def retain(self, pages: Sequence[int]) -> None:
        for page in pages:
            if self.refcount[page] == 0:
                self.prefix.evictable.pop(page, None)
            self.refcount[page] += 1

    def release(self, pages: Sequence[int]) -> None:
        for page in pages:
            if page == NULL_PAGE or self.refcount[page] <= 0:
                raise ValueError(f"release of page {page} that is not referenced")
            self.refcount[page] -= 1
            if self.refcount[page] == 0:
                if self.prefix.has_page(page):
                    self.prefix.evictable[page] = None  # most recently used at the end
                else:
                    self.free.append(page)

    def drop_prefix_cache(self) -> None:
        """Forgets every cached page (after a weight update their KV is stale): unreferenced cached
        pages go back to the free list, referenced ones lose their hash and are freed on release."""
        self.free.extend(self.prefix.clear())

    def check_no_leak(self) -> None:
        """Every page is free or cached-unreferenced: raises if anything is still held."""
        held = np.flatnonzero(self.refcount)
        if len(held):
            raise AssertionError(f"pages still referenced: {held.tolist()}")
        if len(self.free) + len(self.prefix.evictable) != self.num_pages - 1:
            raise AssertionError("page accounting is inconsistent")


class PrefixCache:
    """Chained page hash → page, with LRU eviction of pages no sequence references."""

    def __init__(self):
        self.by_hash: dict[bytes, int] = {}
        self.hash_of: dict[int, bytes] = {}
        self.evictable: collections.OrderedDict[int, None] = collections.OrderedDict()

    def has_page(self, page: int) -> bool:
        return page in self.hash_of

    def match(self, hashes: Sequence[bytes]) -> list[int]:
        """Pages of the longest cached prefix of `hashes`."""
        pages = []
        for h in hashes:
            page = self.by_hash.get(h)
            if page is None:
                break
            pages.append(page)
        return pages

    def insert(self, h: bytes, page: int) -> None:
        if h in self.by_hash or page in self.hash_of:
            return  # an identical page is already cached, or this page already carries a hash
        self.by_hash[h] = page
        self.hash_of[page] = h

    def clear(self) -> list[int]:
        """Drops every entry; returns the pages that were evictable (unreferenced), now owned by no one."""
        pages = list(self.evictable)
        self.by_hash.clear()
        self.hash_of.clear()
        self.evictable.clear()
        return pages

    def evict(self) -> int:
        page, _ = self.evictable.popitem(last=False)
        del self.by_hash[self.hash_of.pop(page)]
        return page


def page_hashes(token_ids: np.ndarray, media_keys: np.ndarray, positions: np.ndarray, page_size: int,
                known: Sequence[bytes] = ()) -> list[bytes]:
    """Chained hashes of every *full* page of a sequence.

    token_ids `[T]`; media_keys `[T]` uint64 (0 for text, else a content hash of the media item mixed with
    the token's index inside it); positions `[3, T]` rope positions. `known` are already computed hashes
    of the first pages (the chain continues from the last one), so a growing sequence hashes each page once.
    """
    out = list(known)
    prev = out[-1] if out else b""
    for start in range(len(out) * page_size, len(token_ids) - page_size + 1, page_size):
        end = start + page_size
        digest = hashlib.blake2b(prev, digest_size=16)
        digest.update(np.ascontiguousarray(token_ids[start:end], np.int64).tobytes())
        digest.update(np.ascontiguousarray(media_keys[start:end], np.uint64).tobytes())
        digest.update(np.ascontiguousarray(positions[:, start:end], np.int64).tobytes())
        prev = digest.digest()
        out.append(prev)
    return out
