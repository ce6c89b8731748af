"""The artifact contract, torch-free: input/output names, the metadata schema and its reader.

Both wings import these facts from here: the exporters write them, the runtime reads
them. Nothing here imports torch or the build side.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from .errors import ArtifactError

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "SCHEMA_VERSION", "METADATA_KEY", "ArtifactMetadata"]

OUTPUT_NAMES = ("logits", "probabilities", "class_index", "score", "cam")
# ONNX names must be unique across inputs and outputs, so the optional class input
# cannot also be called "class_index"; it is "target_class" in every format.
INPUT_NAMES = ("image", "target_class")
SCHEMA_VERSION = 1
METADATA_KEY = "gradcam.json"  # TorchScript extra file; ONNX metadata_props use one key per field


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
        missing = sorted(n for n in names if n not in record and n != "opset")
        if missing:
            raise ArtifactError(f"{source}: the gradcam metadata lacks {', '.join(missing)}; re-export the artifact")
        values = {k: v for k, v in record.items() if k in names}
        for key in ("class_names", "input_size", "mean", "std", "example_size"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)
