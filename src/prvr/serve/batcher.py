"""Micro-batching of concurrent searches: one worker thread takes every query waiting, encodes their texts as one
batch and scores them as one matrix (`Retriever.search_many`), so 20 clients cost about one pass over the index,
not 20, and the threads doing search work stay fixed (the worker and torch's intra-op pool).

Nothing waits for a batch to fill: the worker takes what is queued when it becomes free, so a lone query is
answered at once. Queries beyond `max_pending` waiting are refused (`Busy`, HTTP 503), which bounds memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from prvr.errors import PrvrError


class Busy(PrvrError):
    """Too many queries are waiting."""


class QueryBatcher:
    def __init__(self, search_many: Callable[[list[str], int], list[Any]], max_batch: int = 32,
                 max_pending: int = 256, finish: Callable[[Any, int], Any] | None = None):
        """`search_many(texts, k) -> per text its hits (best first)`; `finish(hits, k)` runs in the worker on each
        request's hits (cut to its own k) before they are handed back."""
        self.search_many, self.finish = search_many, finish or (lambda hits, k: hits)
        self.max_batch, self.max_pending = max_batch, max_pending
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self.batches = 0  # statistics: batches run and queries answered
        self.queries = 0
        self._thread = threading.Thread(target=self._run, name="prvr-search", daemon=True)
        self._thread.start()

    def submit(self, text: str, k: int, path: str | None = None) -> Future:
        """`path`: only videos whose file path contains it (queries with the same filter are scored together)."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise Busy(f"server busy: {self._pending} queries waiting (at most {self.max_pending}); retry later")
            self._pending += 1
        fut: Future = Future()
        self._queue.put((text, k, fut, path))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:  # whatever else is waiting now; never wait for more
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            with self._lock:
                self._pending -= len(batch)
            groups: dict[str | None, list] = {}
            for item in batch:
                groups.setdefault(item[3], []).append(item)
            for group in groups.values():
                self._process(group)

    def _process(self, batch: list) -> None:
        path = batch[0][3]
        try:
            texts, k = [t for t, *_ in batch], max(k for _, k, *_ in batch)
            results = self.search_many(texts, k) if path is None else self.search_many(texts, k, path=path)
        except Exception as e:  # noqa: BLE001  isolate the query that failed: the others still get answers
            if len(batch) == 1:
                batch[0][2].set_exception(e)
                return
            for item in batch:
                self._process([item])
            return
        self.batches += 1
        self.queries += len(batch)
        for (_, k, fut, _), hits in zip(batch, results, strict=True):
            try:
                fut.set_result(self.finish(hits[:k], k))
            except Exception as e:  # noqa: BLE001
                fut.set_exception(e)
