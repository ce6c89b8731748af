"""The package's exceptions: one root class, one subclass per failure stage.

Every message says what was expected and what to do next, so the CLI can print
it as a single line.
"""

from __future__ import annotations

import contextlib

__all__ = [
    "GradCAMError",
    "ArchitectureError",
    "LayerNotFoundError",
    "LayerError",
    "MethodError",
    "ModelOutputError",
    "ModelTypeError",
    "UnsupportedOperatorError",
    "ExportError",
    "ArtifactError",
    "ArtifactLoadError",
    "InputError",
    "ParityError",
    "WeightsError",
    "MissingExtraError",
    "OutputExistsError",
    "BackendError",
    "foreign_errors",
    "first_line",
]


class GradCAMError(Exception):
    """Root of every error raised on purpose by :mod:`gradcam_model`.

    ``cli_message``, when set, is the same message worded for the command line (flags
    instead of Python arguments); ``gradcam`` prints it instead of ``str(exc)``.
    """

    cli_message: str | None = None


class ArchitectureError(GradCAMError, ValueError):
    """An architecture name or model factory that cannot be resolved or built."""


class LayerNotFoundError(GradCAMError, KeyError):
    """A target layer name that the model does not have."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        self.name = name
        self.suggestions = list(suggestions)
        hint = f" Did you mean {', '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        super().__init__(
            f"layer {name!r} not found in the model.{hint} "
            "Run `gradcam layers` or gradcam_model.list_layers(model, example_input) to see the candidates."
        )

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class LayerError(GradCAMError):
    """A layer that exists but cannot be explained (no gradient path, tuple output, never called...)."""


class MethodError(GradCAMError, ValueError):
    """An unknown CAM method, or one that does not apply to this model/layer."""


class ModelOutputError(GradCAMError):
    """The model's output is not a ``[N, C]`` tensor of logits."""


class ModelTypeError(GradCAMError, TypeError):
    """Something given as the model that is not a ``torch.nn.Module`` (a state dict, a path, a name)."""


class UnsupportedOperatorError(GradCAMError):
    """A backward operator that we cannot lower to forward operators."""

    def __init__(self, op: str, target_layer: str) -> None:
        self.op = op
        self.target_layer = target_layer
        super().__init__(
            f"the gradient from the logits back to layer {target_layer!r} uses operator {op}, "
            "which has no decomposition to forward operators; choose a later layer "
            "(see `gradcam layers`) or report the operator to the gradcam_model maintainers."
        )


class ExportError(GradCAMError):
    """Writing an artifact failed; any older file at the path is untouched."""


class ArtifactError(GradCAMError):
    """A file that is missing, unreadable, or not a gradcam_model artifact."""


class ArtifactLoadError(ArtifactError):
    """An artifact file that its runtime cannot load (corrupt, or an operator the runtime lacks):
    the message carries the runtime's own first error line (``gradcam validate`` exits 4)."""


class InputError(GradCAMError, ValueError):
    """Images or class indices that do not match what the explainer expects."""


class ParityError(GradCAMError):
    """An artifact whose outputs differ from the eager reference beyond tolerance."""


class WeightsError(GradCAMError):
    """A weights file that is missing, not a checkpoint, or does not fit the model."""


class MissingExtraError(GradCAMError, ImportError):
    """A build-side name used on an install without torch: names the extra to install."""


class OutputExistsError(ExportError):
    """An output from an earlier run exists; the message names the option (or flag) that replaces it.

    ``template`` holds ``{overwrite}`` (and ``{resume}``): ``overwrite=True`` in Python,
    ``--overwrite`` on the command line.
    """

    _API = {"overwrite": "overwrite=True", "resume": "resume=True"}
    _CLI = {"overwrite": "--overwrite", "resume": "--resume"}

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(template.format(**self._API))
        self.cli_message = template.format(**self._CLI)


class BackendError(GradCAMError):
    """torch, a runtime or the model itself raised while we built or checked a graph (first line kept)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message (its type name when empty), at most ``limit`` characters."""
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {line[:limit]}" if line else type(exc).__name__


@contextlib.contextmanager
def foreign_errors(stage: str, cls: type[GradCAMError] = BackendError):
    """Let only our own errors out (also usable as a decorator): anything else raised inside
    becomes ``cls("<stage> failed: <type>: <first line>")``, the original kept as ``__cause__``."""
    try:
        yield
    except GradCAMError:
        raise
    except Exception as exc:
        raise cls(f"{stage} failed: {first_line(exc)}") from exc
