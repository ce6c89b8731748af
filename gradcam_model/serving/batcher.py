"""Dynamic batching for the server: one thread runs the explainer; requests that arrive meanwhile run together.

Request threads decode and encode pictures in parallel; ONNX Runtime runs one call at a
time (it already spreads a call over every core), on everything queued since the last
call, up to ``max_batch`` images. A request that finds no other in flight runs on its own
thread at once (no hand-off to the batching thread and back: 0.04-0.07 ms a request at
concurrency 1). Inputs are validated per request before they are queued, so one bad
request never fails the others of its batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

import numpy as np

from ..runtime.explainer import Explainer, Explanation

__all__ = ["Batcher"]

log = logging.getLogger(__name__)


class Batcher:
    """``submit(images, classes) -> Explanation`` from any thread; one worker thread runs the batches."""

    def __init__(self, explainer: Explainer, max_batch: int = 8) -> None:
        self.explainer = explainer
        self.max_batch = max_batch
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.executions = 0  # explainer calls (batches) so far
        self.running = threading.Lock()  # held by the explainer call in progress: one at a time
        self.count_lock = threading.Lock()
        self.in_flight = 0  # submitted requests not answered yet
        self.thread = threading.Thread(target=self._loop, name="gradcam-batcher", daemon=True)
        self.thread.start()

    def submit(self, images, classes=None) -> Explanation:
        """Validate (raising InputError here, for this request only), run or queue, wait for the result."""
        images = self.explainer.check_images(images)
        classes = self.explainer.check_class_index(classes, images.shape[0])
        with self.count_lock:
            alone = self.in_flight == 0  # nothing queued or running: no batch to join
            self.in_flight += 1
        try:
            if alone:
                with self.running:
                    return self._call(images, classes, 1)
            future: Future = Future()
            self.queue.put((images, classes, future))
            return future.result()
        finally:
            with self.count_lock:
                self.in_flight -= 1

    def close(self) -> None:
        self.queue.put(None)

    def _take(self, first) -> list:
        """``first`` and whatever else is queued now, up to ``max_batch`` images (at least ``first``)."""
        taken, count = [first], first[0].shape[0]
        while count < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)  # stop after this batch
                break
            taken.append(item)
            count += item[0].shape[0]
        return taken

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            with self.running:  # a lone request's call may still run: what queues meanwhile joins this batch
                groups: dict[tuple, list] = {}  # only images of one size can share a batch
                for item in self._take(first):
                    groups.setdefault(item[0].shape[1:], []).append(item)
                for items in groups.values():
                    self._run(items)

    def _call(self, images, classes, requests: int) -> Explanation:
        """One explainer call (``self.running`` held); a failure is logged here, raised to the caller."""
        try:
            result = self.explainer(images, classes)
        except Exception:
            log.exception("explainer failed on a batch of %d requests", requests)
            raise
        self.executions += 1
        return result

    def _run(self, items: list) -> None:
        try:
            images = np.concatenate([i[0] for i in items]) if len(items) > 1 else items[0][0]
            classes = None if items[0][1] is None else np.concatenate([i[1] for i in items])
            result = self._call(images, classes, len(items))
        except Exception as exc:  # a bug, not a bad request (inputs were checked): fail these, keep serving
            for _, _, future in items:
                future.set_exception(exc)
            return
        start = 0
        for batch, _, future in items:
            end = start + batch.shape[0]
            parts = [o[start:end] for o in result.outputs()]
            future.set_result(Explanation.of(parts, result.metadata))
            start = end
