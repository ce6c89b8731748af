"""The Triton python-backend model: an artifact run by our serve-side runtime inside ``tritonserver``.

A repository written by ``gradcam triton --backend python`` holds ``NAME/1/model.py``,
which only imports :class:`TritonPythonModel` from here, so the code that runs is the
installed ``gradcam_model`` (numpy, ONNX Runtime and OpenCV; never torch).

Inputs per request (``N`` = the request's batch): ``image_bytes`` BYTES ``[N, 1]``, encoded
pictures decoded and preprocessed as the artifact records (as ``gradcam serve`` does), or
``image`` FP32 ``[N, C, H, W]``, already normalized; optional ``target_class`` INT64
``[N, 1]`` (``-1``: the top class) for artifacts exported with a class input. Outputs: the
five contract outputs, and on request ``overlay_png`` (BYTES ``[N, K]``, one PNG per explained
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

EXTRA_OUTPUTS = ("overlay_png", "region")  # computed only when a request asks for them (or names no outputs)
_V2_TYPES = {"f4": "FP32", "f8": "FP64", "i8": "INT64", "i4": "INT32"}  # numpy kind + size -> v2 datatype
_pb = None  # triton_python_backend_utils: exists only inside the python-backend stub


@dataclass
class _Request:
    """One parsed request: its inputs ready to run and, for pictures, the decoded pictures."""

    images: np.ndarray  # [n, C, H, W] float32, normalized
    classes: np.ndarray | None  # [n] int64 for class-input artifacts
    pictures: list  # RGB uint8 per image, or None for tensor inputs
    regions: np.ndarray  # [n, 4] float32: x, y, w, h of the picture the input shows
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
        """The request's tensors through ``gradcam serve``'s own v2 checks (``v2.v2_inputs``)."""
        from .v2 import v2_inputs

        tensors = {}
        for name in ("image", "image_bytes", "target_class"):
            tensor = _pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                continue
            array = tensor.as_numpy()
            if name != "image":  # Triton batches these as [N, 1]; gradcam serve's v2 as [N]
                if array.ndim != 2 or array.shape[1] != 1:
                    raise InputError(f'input "{name}" must be [N, 1] (one per image), got {list(array.shape)}')
                array = array[:, 0]
            tensors[name] = (_V2_TYPES.get(array.dtype.kind + str(array.dtype.itemsize), "BYTES"), array)
        batch = v2_inputs(tensors, self.meta, self.limits)
        classes = batch.classes
        if classes is None and self.meta.class_input:
            classes = np.full(batch.images.shape[0], -1, np.int64)
        return _Request(batch.images, classes, batch.pictures, batch.regions, set(request.requested_output_names()))

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
        from ..contract import output_names

        if isinstance(outputs, GradCAMError):
            return self._error(outputs)
        names = output_names(self.meta.method)  # the five, and "guided" for a guided artifact
        tensors = [_pb.Tensor(n, np.ascontiguousarray(a)) for n, a in zip(names, outputs, strict=True)]
        if request.wanted & set(EXTRA_OUTPUTS):
            overlays, regions = self._overlays(request, outputs[names.index("cam")])
            tensors += [_pb.Tensor("overlay_png", overlays), _pb.Tensor("region", regions)]
        return _pb.InferenceResponse(output_tensors=tensors)

    def _overlays(self, request: _Request, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """PNG per explained class ``[n, K]`` (object), as gradcam serve's ``overlay_png``, and the regions."""
        from .protocol import overlay_bytes

        n, k = cam.shape[:2]
        pngs = np.empty((n, k), dtype=np.object_)
        for j, picture in enumerate(request.pictures):
            for c in range(k):
                pngs[j, c] = overlay_bytes(picture, cam[j, c], tuple(request.regions[j]), "png",
                                           colormap=self.colormap, alpha=self.alpha)  # fmt: skip
        return pngs, request.regions

    @staticmethod
    def _error(exc: GradCAMError):
        message = " ".join(str(exc).split())  # one line
        return _pb.InferenceResponse(output_tensors=[], error=_pb.TritonError(message, _pb.TritonError.INVALID_ARG))
