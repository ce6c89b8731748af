"""The artifact contract: one dataclass, read by the Python runtime and the C++ library alike."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from gradcam_model.contract import METADATA_KEY, SCHEMA_VERSION, ArtifactMetadata, Preprocessing
from gradcam_model.export.metadata import metadata_for

CPP = Path(__file__).resolve().parent.parent / "cpp"
# fields the C++ library has no use for: how the maps were post-processed (they only
# draw them) and which versions wrote the file
NOT_READ_BY_CPP = {"upsample", "normalize", "package_version", "torch_version", "opset"}


def _cpp_keys() -> set[str]:
    """The keys metadata.cpp reads from gradcam.json: ``f.get<...>("key")``, ``f.positive("key")``..."""
    source = (CPP / "src" / "metadata.cpp").read_text()
    return set(re.findall(r'\bf\.\w+[^(;]*\("(\w+)"', source))


def test_cpp_reads_exactly_the_dataclass_fields():
    names = {f.name for f in fields(ArtifactMetadata)}
    keys = _cpp_keys()
    assert len(keys) >= 10, keys  # the pattern still finds the reads
    assert keys - names == set(), "metadata.cpp reads keys the Python side never writes"
    assert names - keys == NOT_READ_BY_CPP, "a new metadata field: read it in cpp/src/metadata.cpp or list it here"


def test_cpp_knows_exactly_the_preprocessing_fields():
    """A field the C++ side does not know is refused there (exit 4): both lists must stay equal."""
    source = (CPP / "src" / "metadata.cpp").read_text()
    known = re.search(r"const char\* known\[\] = \{([^}]*)\};", source)
    assert known, "metadata.cpp lists the preprocessing fields it applies in `known[]`"
    assert re.findall(r'"(\w+)"', known.group(1)) == [f.name for f in fields(Preprocessing)]


def test_cpp_constants_match_the_contract():
    header = (CPP / "include" / "gradcam" / "metadata.h").read_text()
    assert re.search(rf"kSchemaVersion = {SCHEMA_VERSION};", header)
    assert f'kMetadataKey = "{METADATA_KEY}"' in header
    for program in ("src/onnxruntime.cpp", "programs/gradcam_run.cpp"):
        assert f'"{METADATA_KEY}"' in (CPP / program).read_text(), program


def test_metadata_for_reads_the_wrapper_attributes():
    """No field copied by hand: the record is the wrapper's attributes plus the export's own fields."""

    class Wrapper:  # the attributes a GradCAMModel has
        method, target_layer, architecture, num_classes = "gradcam", "layer4", "resnet18", 3
        class_names, input_size, in_channels = ("a", "b", "c"), None, 3
        mean, std, top_k, class_input = (0.5,) * 3, (0.25,) * 3, 2, False
        upsample, normalize, example_size = True, True, (64, 64)
        preprocessing = Preprocessing(resize="shorter", crop_pct=0.875, interpolation="bicubic")

    meta = metadata_for(Wrapper(), "torchscript")
    assert (meta.method, meta.top_k, meta.class_names, meta.example_size) == ("gradcam", 2, ("a", "b", "c"), (64, 64))
    assert (meta.format, meta.opset, meta.schema_version) == ("torchscript", None, SCHEMA_VERSION)
    assert meta.preprocessing == Wrapper.preprocessing
