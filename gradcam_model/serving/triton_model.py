"""The Triton python-backend model: an artifact run by our serve-side runtime inside ``tritonserver``.

A repository written by ``gradcam triton --backend python`` holds ``NAME/1/model.py``,
which only imports :class:`TritonPythonModel` from here, so the code that runs is the
installed ``gradcam_model`` (numpy, ONNX Runtime and OpenCV; never torch).

Inputs per request (``N`` = the request's batch): ``image_bytes`` BYTES ``[N, 1]``, encoded
pictures decoded and preprocessed as the artifact records (as ``gradcam serve`` does), or
``image`` FP32 ``[N, C, H, W]``, already normalized; optional ``target_class`` INT64
``[N, 1]`` (``-1``: the top class) for artifacts exported with a class input. Outputs: the
five contract outputs, and on request ``overlay`` (BYTES ``[N, K]``, one PNG per explained
class: the map over the picture, or a heat map for tensors) and ``region`` (FP32
``[N, 4]``, the ``x, y, w, h`` of the picture the input shows). Triton's dynamic batcher
hands over several requests at once: those whose inputs share a shape run as one
ONNX Runtime call. A bad request gets an INVALID_ARG error with our one-line message;
the other requests of the batch are answered as usual.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GradCAMError, InputError

__all__ = ["EXTRA_OUTPUTS", "TritonPythonModel"]

EXTRA_OUTPUTS = ("overlay", "region")  # computed only when a request asks for them (or names no outputs)
_pb = None  # triton_python_backend_utils: exists only inside the python-backend stub


@dataclass
class _Request:
    """One parsed request: its inputs ready to run and, for pictures, the decoded pictures."""

    images: np.ndarray  # [n, C, H, W] float32, normalized
    classes: np.ndarray | None  # [n] int64 for class-input artifacts
    pictures: list  # RGB uint8 per image, or None for tensor inputs
    wanted: set


class TritonPythonModel:
    """What Triton's python backend calls: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict) -> None:
        global _pb
        import triton_python_backend_utils as pb_utils

        _pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        max_pixels = int(params.get("max_pixels", "64000000"))
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(max_pixels)  # read when OpenCV loads: before it does
        from ..runtime.explainer import OnnxExplainer, cuda_provider
        from .protocol import ServeLimits

        self.limits = ServeLimits(max_side=int(params.get("max_side", "2048")), max_pixels=max_pixels)
        self.colormap = params.get("colormap", "jet")
        self.alpha = float(params.get("alpha", "0.4"))
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            providers.insert(0, cuda_provider(int(args.get("model_instance_device_id", 0))))
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.explainer = OnnxExplainer(path, providers=providers)
        self.meta = self.explainer.metadata
        _pb.Logger.log_info(f"gradcam: {path} runs on {self.explainer.provider}")

    def execute(self, requests) -> list:
        parsed: list[_Request | GradCAMError] = []
        for request in requests:
            try:
                parsed.append(self._parse(request))
            except GradCAMError as exc:
                parsed.append(exc)
        results = self._run([p for p in parsed if isinstance(p, _Request)])
        return [self._error(p) if isinstance(p, GradCAMError) else self._answer(p, results[id(p)]) for p in parsed]

    def finalize(self) -> None:
        self.explainer = None

    def _parse(self, request) -> _Request:
        from ..runtime.images import preprocess
        from .protocol import _decode, v2_inputs

        tensors = {}
        for name in ("image", "image_bytes", "target_class"):
            tensor = _pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                tensors[name] = tensor.as_numpy()
        if ("image" in tensors) == ("image_bytes" in tensors):
            raise InputError('give exactly one of "image_bytes" (encoded pictures) or "image" (FP32 [N, C, H, W])')
        pictures = [None] * len(tensors.get("image", ()))
        if "image_bytes" in tensors:
            data = tensors["image_bytes"]
            if data.ndim != 2 or data.shape[1] != 1:
                raise InputError(f'input "image_bytes" must be [N, 1] (one picture per row), got {list(data.shape)}')
            pictures = [_decode(bytes(item), f"image_bytes[{i}]", self.limits) for i, item in enumerate(data[:, 0])]
            tensors["image"] = np.stack([preprocess(rgb, self.meta) for rgb in pictures])  # all at one input size
        v2 = {"image": ("FP32", tensors["image"])}
        if "target_class" in tensors:
            target = tensors["target_class"]
            if target.shape != (len(pictures), 1):
                raise InputError(
                    f'input "target_class" must be [{len(pictures)}, 1] (one per image), got {list(target.shape)}'
                )
            v2["target_class"] = ("INT64", target[:, 0])
        image, classes = v2_inputs(v2, self.meta)
        if classes is None and self.meta.class_input:
            classes = np.full(image.shape[0], -1, np.int64)
        return _Request(image, classes, pictures, set(request.requested_output_names()))

    def _run(self, requests: list[_Request]) -> dict:
        """``id(request) ->`` its five outputs, or the GradCAMError of its group; one explainer call per input shape."""
        groups: dict[tuple, list[_Request]] = {}
        for request in requests:
            groups.setdefault(request.images.shape[1:], []).append(request)
        results = {}
        for group in groups.values():
            images = np.concatenate([r.images for r in group])
            classes = np.concatenate([r.classes for r in group]) if self.meta.class_input else None
            try:
                result = self.explainer(images, classes)
            except GradCAMError as exc:
                results.update((id(r), exc) for r in group)
                continue
            start = 0
            for r in group:
                end = start + r.images.shape[0]
                outputs = [a[start:end] for a in result.outputs()]
                results[id(r)] = outputs
                start = end
        return results

    def _answer(self, request: _Request, outputs):
        from ..contract import OUTPUT_NAMES

        if isinstance(outputs, GradCAMError):
            return self._error(outputs)
        tensors = [_pb.Tensor(n, np.ascontiguousarray(a)) for n, a in zip(OUTPUT_NAMES, outputs, strict=True)]
        if request.wanted & set(EXTRA_OUTPUTS):
            overlays, regions = self._overlays(request, outputs[-1])
            tensors += [_pb.Tensor("overlay", overlays), _pb.Tensor("region", regions)]
        return _pb.InferenceResponse(output_tensors=tensors)

    def _overlays(self, request: _Request, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """PNG per explained class ``[n, K]`` (object) and the explained region ``[n, 4]`` per image."""
        from ..runtime.images import explained_region
        from ..runtime.visualize import encode_image, heatmap, overlay

        n, k = cam.shape[:2]
        pngs = np.empty((n, k), dtype=np.object_)
        regions = np.zeros((n, 4), dtype=np.float32)
        for j, picture in enumerate(request.pictures):
            if picture is None:  # a tensor input: the heat map of the whole input
                regions[j] = (0, 0, cam.shape[3], cam.shape[2])
                images = [heatmap(cam[j, c], colormap=self.colormap) for c in range(k)]
            else:
                region = explained_region(picture.shape, self.meta)
                regions[j] = region
                images = [
                    overlay(picture, cam[j, c], colormap=self.colormap, alpha=self.alpha, region=region)
                    for c in range(k)
                ]
            for c, image in enumerate(images):
                pngs[j, c] = encode_image(image, "png")
        return pngs, regions

    @staticmethod
    def _error(exc: GradCAMError):
        message = " ".join(str(exc).split())  # one line
        return _pb.InferenceResponse(output_tensors=[], error=_pb.TritonError(message, _pb.TritonError.INVALID_ARG))
