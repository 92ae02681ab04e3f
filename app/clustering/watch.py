"""The published cluster model as the dataflow sees it: polled from Redis, swapped in without a
restart."""

from __future__ import annotations

import logging
import threading
import time

import redis

from app.clustering import store
from app.clustering.model import ClusterModel

log = logging.getLogger(__name__)

POLL_S = 0.5


class ModelWatcher:
    """The current model (None before the first fit), as of at most ``poll_s`` ago, shared by
    a process's workers. A model that cannot be read keeps the running one."""

    def __init__(self, client: redis.Redis, *, poll_s: float = POLL_S) -> None:
        self._client = client
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._checked = -float("inf")
        self._version: int | None = None
        self._model: ClusterModel | None = None

    def current(self) -> ClusterModel | None:
        if time.monotonic() - self._checked < self._poll_s:
            return self._model
        with self._lock:
            if time.monotonic() - self._checked >= self._poll_s:
                try:
                    version = store.published_version(self._client)
                    if version != self._version:
                        self._model = store.published(self._client)
                        self._version = None if self._model is None else self._model.version
                        if self._model is not None:
                            log.info(
                                "clusters: model version %d (%s, %d clusters)",
                                self._model.version,
                                self._model.algorithm,
                                len(self._model.clusters),
                            )
                except Exception:  # Redis away or a bad model: the running one goes on
                    log.exception("clusters: could not read the published model")
                self._checked = time.monotonic()
        return self._model
