"""A bounded least-recently-used cache of image embeddings, so images revisited across steps encode once."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class EmbeddingCache(Generic[V]):
    """At most `max_items` entries; `max_items=0` disables caching (every `get` misses, `put` keeps nothing).

    An entry holds the embedding on the segmenter's device (4 MiB for a 1024 px SAM image), so size the cache
    to the memory you can spare rather than to the dataset.
    """

    def __init__(self, max_items: int = 0) -> None:
        if max_items < 0:
            raise ValueError(f"cache size must be >= 0, got {max_items}")
        self.max_items = int(max_items)
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable | None) -> V | None:
        if key is None or self.max_items == 0 or key not in self._items:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return self._items[key]

    def put(self, key: Hashable | None, value: V) -> None:
        if key is None or self.max_items == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
