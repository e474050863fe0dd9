"""The conversations behind ``previous_response_id``: per key, in process, bounded.

Each stored response keeps the chat messages of its conversation (input and output, not the instructions, which
OpenAI does not carry over either). The store is per replica: behind a load balancer a follow-up turn must reach
the replica that served the previous one (or it gets a 400 naming the id). Least recently used entries go first
once ``max_entries`` are held; a key sees only its own responses.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Any


class ResponseStore:
    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], list[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()  # the relay's completion callback and routes share it

    def put(self, scope: str, response_id: str, messages: list[dict[str, Any]]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[(scope, response_id)] = copy.deepcopy(messages)
            self._entries.move_to_end((scope, response_id))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, scope: str, response_id: str) -> list[dict[str, Any]] | None:
        with self._lock:
            found = self._entries.get((scope, response_id))
            if found is not None:
                self._entries.move_to_end((scope, response_id))
            return copy.deepcopy(found) if found is not None else None

    def __len__(self) -> int:
        return len(self._entries)
