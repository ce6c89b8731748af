"""The server's batcher: concurrent requests share explainer calls, each gets its own rows, bad ones fail alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gradcam_model import export_onnx
from gradcam_model.errors import InputError
from gradcam_model.runtime import load_explainer
from gradcam_model.runtime.explainer import Explanation
from gradcam_model.serving.batcher import Batcher


def test_concurrent_requests_are_batched_and_split(resnet18_layer4, tmp_path):
    explainer = load_explainer(export_onnx(resnet18_layer4, tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    calls, lock, gate = [], threading.Lock(), threading.Event()
    run = explainer._run

    def counting(image, target):
        gate.wait(timeout=30)  # hold the first call so that the others queue behind it
        with lock:
            calls.append(image.shape[0])
        return run(image, target)

    explainer._run = counting
    batcher = Batcher(explainer, max_batch=8)
    images = np.random.default_rng(0).standard_normal((12, 3, 64, 64)).astype(np.float32)
    sizes = [1, 2, 1, 1, 3, 1, 1, 1, 1]  # 12 images in 9 requests
    starts = np.cumsum([0, *sizes[:-1]])
    try:
        with ThreadPoolExecutor(len(sizes) + 1) as pool:
            futures = [pool.submit(batcher.submit, images[s : s + n]) for s, n in zip(starts, sizes, strict=True)]
            bad = pool.submit(batcher.submit, np.zeros((1, 4, 64, 64), np.float32))
            gate.set()
            results = [f.result(timeout=120) for f in futures]
            with pytest.raises(InputError, match="3 channels"):
                bad.result(timeout=120)
    finally:
        batcher.close()
    assert sum(calls) == 12 and len(calls) < len(sizes) and max(calls) <= 8 + 3
    expected = run(images, None)
    for result, s, n in zip(results, starts, sizes, strict=True):
        assert result.cam.shape[0] == n
        np.testing.assert_array_equal(result.class_index, expected[2][s : s + n])
        # other batch sizes may take other ORT kernels: float32 rounding, then a max-min normalization
        np.testing.assert_allclose(result.cam, expected[4][s : s + n], rtol=0, atol=1e-5)
        np.testing.assert_allclose(result.probabilities, expected[1][s : s + n], rtol=0, atol=1e-6)


class _Recording:
    """An explainer stand-in: records which thread ran each call and on how many images; calls wait for ``gate``."""

    metadata = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def check_images(self, images):
        return np.asarray(images, np.float32)

    def check_class_index(self, classes, batch):
        return classes

    def __call__(self, images, classes=None) -> Explanation:
        self.calls.append((threading.current_thread().name, images.shape[0]))
        self.started.set()
        self.gate.wait(timeout=30)
        rows = images[:, 0, 0, :1]  # [N, 1]: each request's own value, to check the split
        return Explanation.of([rows, rows, rows, rows, images], None)


def test_a_lone_request_runs_at_once_and_later_ones_batch_behind_it():
    explainer = _Recording()
    batcher = Batcher(explainer, max_batch=8)
    images = [np.full((1, 3, 2, 2), float(i), np.float32) for i in range(5)]
    try:
        explainer.gate.set()
        alone = batcher.submit(images[0])  # nothing else in flight: this thread calls the explainer
        assert explainer.calls == [(threading.current_thread().name, 1)]
        np.testing.assert_array_equal(alone.cam, images[0])
        explainer.gate.clear()
        explainer.started.clear()
        with ThreadPoolExecutor(5) as pool:
            first = pool.submit(batcher.submit, images[1])
            assert explainer.started.wait(timeout=30)  # the lone request runs, held at the gate
            queued = [pool.submit(batcher.submit, x) for x in images[2:]]  # one in flight: these queue
            while batcher.in_flight < 4:
                threading.Event().wait(0.01)
            explainer.gate.set()
            results = [f.result(timeout=30) for f in (first, *queued)]
    finally:
        batcher.close()
    assert explainer.calls[1][0].startswith("ThreadPoolExecutor") and explainer.calls[1][1] == 1
    behind = explainer.calls[2:]  # the queued ones: on the batching thread, together (unless one was late)
    assert {name for name, _ in behind} == {"gradcam-batcher"} and sum(n for _, n in behind) == 3
    assert batcher.executions == len(explainer.calls) and batcher.in_flight == 0
    for result, x in zip(results, images[1:], strict=True):
        np.testing.assert_array_equal(result.cam, x)
