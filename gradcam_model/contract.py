"""The artifact contract, torch-free: input/output names, the metadata schema and its reader.

Both wings import these facts from here: the exporters write them, the runtime reads
them. Nothing here imports torch or the build side.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from .errors import ArtifactError

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "GUIDED_OUTPUT",
    "GUIDED_METHODS",
    "output_names",
    "SCHEMA_VERSION",
    "METADATA_KEY",
    "RESIZE_MODES",
    "INTERPOLATIONS",
    "ArtifactMetadata",
    "Preprocessing",
]

OUTPUT_NAMES = ("logits", "probabilities", "class_index", "score", "cam")
# The guided methods' sixth output: float32 [N, K, 3, H, W], an input-resolution gradient image
# per explained class (guided backpropagation's dy^c/dx; guided Grad-CAM's cam * that). Signed
# and unnormalized: pictures show it with pytorch-grad-cam's deprocess_image rule.
GUIDED_OUTPUT = "guided"
GUIDED_METHODS = ("guided-backprop", "guided-gradcam")
# ONNX names must be unique across inputs and outputs, so the optional class input
# cannot also be called "class_index"; it is "target_class" in every format.
INPUT_NAMES = ("image", "target_class")
SCHEMA_VERSION = 2  # 2: the preprocessing record; version-1 artifacts read as Preprocessing() (stretch, area)
METADATA_KEY = "gradcam.json"  # TorchScript extra file; ONNX metadata_props use one key per field


def output_names(method: str) -> tuple[str, ...]:
    """An artifact's outputs in order: :data:`OUTPUT_NAMES`, then :data:`GUIDED_OUTPUT` for a guided ``method``."""
    return (*OUTPUT_NAMES, GUIDED_OUTPUT) if method in GUIDED_METHODS else OUTPUT_NAMES


RESIZE_MODES = ("stretch", "shorter")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocessing:
    """How a picture becomes the network input before ``(x - mean) / std`` (timm's eval transform's terms).

    ``resize``:
      - ``"stretch"``: the picture is resized to ``floor(size / crop_pct)`` in each
        dimension, its aspect ratio ignored, then centre-cropped to ``size`` (with
        ``crop_pct`` 1: stretched to the input size; timm's ``crop_mode="squash"``).
      - ``"shorter"``: its shorter side is resized to ``resize_size`` (torchvision's
        weights transforms; stated for the artifact's ``example_size`` and scaled with
        the input at other sizes) or else ``floor(size / crop_pct)``, the aspect ratio
        kept, then the centre is cropped to ``size`` (timm's default ``crop_mode="center"``).

    ``interpolation``: ``"bilinear"``, ``"bicubic"`` and ``"nearest"`` resample as Pillow
    does (what torchvision and timm transforms use), antialiased when shrinking unless
    ``antialias`` is false; ``"area"``: OpenCV's area average when shrinking and
    bilinear when enlarging, on float pixels (what version-1 artifacts were validated with).
    Then pixels are divided by ``scale`` and put in ``channel_order``.
    """

    resize: str = "stretch"
    crop_pct: float = 1.0
    resize_size: int | None = None
    interpolation: str = "area"
    antialias: bool = True
    channel_order: str = "RGB"
    scale: float = 255.0

    def problems(self) -> list[str]:
        """What is wrong with these values, one phrase each naming the field (empty when they can be applied)."""
        found = []
        if self.resize not in RESIZE_MODES:
            found.append(f"resize {self.resize!r} (expected one of: {', '.join(RESIZE_MODES)})")
        if self.interpolation not in INTERPOLATIONS:
            found.append(f"interpolation {self.interpolation!r} (expected one of: {', '.join(INTERPOLATIONS)})")
        if self.channel_order not in CHANNEL_ORDERS:
            found.append(f"channel_order {self.channel_order!r} (expected RGB or BGR)")
        if not _number(self.crop_pct) or not 0.0 < self.crop_pct <= 1.0:
            found.append(f"crop_pct {self.crop_pct!r} (expected a number in (0, 1])")
        if self.resize_size is not None and (not _integer(self.resize_size) or self.resize_size < 1):
            found.append(f"resize_size {self.resize_size!r} (expected a positive integer)")
        if self.resize_size is not None and self.resize != "shorter":
            found.append(f"resize_size {self.resize_size} with resize {self.resize!r} (only 'shorter' takes one)")
        if not _number(self.scale) or self.scale <= 0:
            found.append(f"scale {self.scale!r} (expected a positive number)")
        if not isinstance(self.antialias, bool):
            found.append(f"antialias {self.antialias!r} (expected true or false)")
        return found

    def describe(self, size: tuple[int, int] | None = None) -> str:
        """One line for people: ``shorter side to 256 (bicubic, antialiased), centre crop 224x224, RGB / 255``."""
        crop = f"{size[0]}x{size[1]}" if size else "the input size"
        how = self.interpolation + ("" if self.interpolation in ("area", "nearest") else
                                    ", antialiased" if self.antialias else ", not antialiased")  # fmt: skip
        if self.resize == "shorter":
            side = self.resize_size or (
                f"{math.floor(size[0] / self.crop_pct)} ({size[0]} / {self.crop_pct:g})"
                if size and size[0] == size[1]
                else f"{crop} / {self.crop_pct:g}"
            )
            text = f"shorter side to {side} ({how}), centre crop {crop}"
        elif self.crop_pct == 1.0:
            text = f"stretch to {crop} ({how}, aspect ratio not kept)"
        else:
            text = f"stretch to {crop} / {self.crop_pct:g} ({how}, aspect ratio not kept), centre crop {crop}"
        return f"{text}, {self.channel_order} / {self.scale:g}"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ArtifactMetadata:
    """Everything recorded in an artifact next to the graph."""

    schema_version: int
    method: str
    target_layer: str
    architecture: str
    num_classes: int
    class_names: tuple[str, ...] | None
    input_size: tuple[int, int] | None  # None: height and width are dynamic
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    top_k: int
    class_input: bool
    upsample: bool
    normalize: bool
    example_size: tuple[int, int]
    format: str
    package_version: str
    torch_version: str
    opset: int | None = None
    preprocessing: Preprocessing = Preprocessing()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def to_props(self) -> dict[str, str]:
        """ONNX ``metadata_props``: one JSON-encoded value per key, plus the whole record."""
        record = asdict(self)
        props = {key: json.dumps(value) for key, value in record.items()}
        props[METADATA_KEY] = self.to_json()
        return props

    def label(self, index: int) -> str:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> ArtifactMetadata:
        try:
            record = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{source}: the gradcam metadata is not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or "schema_version" not in record:
            raise ArtifactError(f"{source}: the gradcam metadata has no schema_version; re-export the artifact")
        version = record["schema_version"]
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ArtifactError(
                f"{source}: metadata schema version {version!r} is newer than this gradcam_model understands "
                f"(up to {SCHEMA_VERSION}); upgrade gradcam_model"
            )
        names = {f.name for f in fields(cls)}
        optional = {"opset"} if version >= 2 else {"opset", "preprocessing"}
        missing = sorted(n for n in names if n not in record and n not in optional)
        if missing:
            raise ArtifactError(f"{source}: the gradcam metadata lacks {', '.join(missing)}; re-export the artifact")
        values = {k: v for k, v in record.items() if k in names}
        for key in ("class_names", "input_size", "mean", "std", "example_size"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if "preprocessing" in values:
            values["preprocessing"] = _read_preprocessing(values["preprocessing"], source)
        return cls(**values)


def _read_preprocessing(record, source: str) -> Preprocessing:
    known = {f.name for f in fields(Preprocessing)}
    if not isinstance(record, dict) or set(record) - known:
        extra = sorted(set(record) - known) if isinstance(record, dict) else [type(record).__name__]
        raise ArtifactError(
            f"{source}: the preprocessing record has fields this gradcam_model cannot apply ({', '.join(extra)}); "
            "upgrade gradcam_model"
        )
    prep = Preprocessing(**record)
    problems = prep.problems()
    if problems:
        raise ArtifactError(f"{source}: this gradcam_model cannot apply the recorded preprocessing: {problems[0]}")
    return prep
