"""The model registry: which models napari-medsam knows, their files and how to feed them.

Built-in models are listed in ``registry.json`` beside this file. Models that a user exports
from a checkpoint of their own get a ``model.json`` with the same fields in their cache
folder, and are listed after the built-in ones.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from napari_medsam.paths import cache_dir, model_dir

logger = logging.getLogger(__name__)

SPEC_FILENAME = "model.json"
ROLES = ("encoder", "decoder")
#: A model name or file name: letters, digits, ``_``, ``-`` and ``.``, not starting with ``.``
#: or ``-``, at most 64 characters (so ``..``, ``.`` and paths are never names).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def check_name(name: str, what: str = "model name") -> str:
    """``name`` when it is a safe model or file name; a ValueError that says why otherwise.

    Model names become folders in the user cache and file names are joined to them: a name
    like ``..`` or ``a/b`` must never reach the file system (``export-model --name ..`` once
    deleted the whole cache).
    """
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"invalid {what} {name!r}: use 1 to 64 letters, digits, '_', '-' or "
                         "'.', starting with a letter, digit or '_' (no folders, '.' or '..')")
    return name


@dataclass(frozen=True)
class FileSpec:
    """One exported ONNX file: its name, its expected sha256, and whose folder it is in.

    ``model`` names another model whose file this is (an adapted model shares its base
    model's encoder: the file is not copied); None means the model's own folder.
    """

    filename: str
    sha256: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        check_name(self.filename, "file name")
        if self.model is not None:
            check_name(self.model)


#: How far (as a factor) a slice's longest side may lie outside the sides an adapted model
#: was trained and checked on. A decoder adapted on 122-pixel CT slices answered clicks on
#: 512-pixel slices of another CT with 0.46 Dice where the click search gave 0.72, and (with
#: the prompt encoder trained too) lost 0.015 box Dice there; outside, the base model's
#: decoder answers.
POINT_SIDE_TOLERANCE = 2.0


@dataclass(frozen=True)
class PointDomain:
    """The slices an adapted model was trained and checked on (its answers are trusted
    there; elsewhere the base model's decoder answers).

    Attributes
    ----------
    min_side, max_side
        Range of the longest side (pixels) of the whole slices it was trained and checked
        on.
    intensities
        Intensity mappings seen there: ``"ct"`` (a fixed CT window) and/or ``"mr"``.
    """

    min_side: int
    max_side: int
    intensities: tuple[str, ...]

    def covers(self, shape: tuple[int, ...], intensity: str) -> bool:
        """Whether a slice of ``shape`` under ``intensity`` is like the checked ones."""
        side = max(int(v) for v in shape)
        return (intensity in self.intensities
                and self.min_side / POINT_SIDE_TOLERANCE <= side
                <= self.max_side * POINT_SIDE_TOLERANCE)

    def describe(self) -> str:
        sides = (f"{self.min_side} px" if self.min_side == self.max_side
                 else f"{self.min_side}-{self.max_side} px")
        return f"{'/'.join(i.upper() for i in self.intensities)} slices of {sides}"

    def to_json(self) -> dict[str, Any]:
        return {"min_side": self.min_side, "max_side": self.max_side,
                "intensities": list(self.intensities)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PointDomain:
        return cls(int(data["min_side"]), int(data["max_side"]),
                   tuple(str(v) for v in data["intensities"]))


@dataclass(frozen=True)
class ModelSpec:
    """Everything the engine needs to know about a model besides its weights."""

    name: str
    display_name: str
    architecture: str
    input_size: int
    embedding_shape: tuple[int, int, int]
    low_res_size: int
    preprocessing: dict[str, Any]
    prompts: tuple[str, ...]
    files: dict[str, FileSpec]
    source: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    builtin: bool = True
    notes: str = ""
    #: What the model computes on a fixed input (:mod:`.fingerprint`); verifies files whose
    #: bytes differ from ``files[role].sha256`` (exports on other CPUs).
    fingerprint: dict[str, Any] = field(default_factory=dict)
    #: Where the model's own click answers were checked (adapted models); None: anywhere.
    point_domain: PointDomain | None = None

    @property
    def directory(self) -> Path:
        """Cache folder holding this model's ONNX files."""
        return model_dir(self.name)

    def path(self, role: str) -> Path:
        """Path of the ``encoder`` or ``decoder`` ONNX file."""
        file = self.files[role]
        folder = self.directory if file.model is None else model_dir(file.model)
        return folder / file.filename

    @property
    def encoder_model(self) -> str:
        """The model whose encoder this one runs: itself, or the base model it shares it
        with. Embeddings (and their caches) belong to the encoder, so models that share one
        share them."""
        return self.files["encoder"].model or self.name

    def answers(self, prompt: str) -> bool:
        """Whether the model gives useful masks for ``prompt`` ("box" or "point")."""
        return prompt in self.prompts

    def answers_points_on(self, shape: tuple[int, ...], intensity: str) -> bool:
        """Whether the model answers clicks itself on a slice of ``shape`` under
        ``intensity`` (``"ct"`` or ``"mr"``): it answers points and the slice is like those
        its click answers were checked on."""
        if not self.answers("point"):
            return False
        return self.point_domain is None or self.point_domain.covers(shape, intensity)

    def to_json(self) -> dict[str, Any]:
        data = {
            "display_name": self.display_name,
            "architecture": self.architecture,
            "source": self.source,
            "input_size": self.input_size,
            "embedding_shape": list(self.embedding_shape),
            "low_res_size": self.low_res_size,
            "preprocessing": self.preprocessing,
            "prompts": list(self.prompts),
            "notes": self.notes,
            "opset": self.opset,
            "files": {r: {"filename": f.filename, "sha256": f.sha256,
                          **({"model": f.model} if f.model else {})}
                      for r, f in self.files.items()},
        }
        if self.point_domain is not None:
            data["point_domain"] = self.point_domain.to_json()
        if self.fingerprint:
            data["fingerprint"] = self.fingerprint
        return data


def spec_from_json(name: str, data: dict[str, Any], *, builtin: bool) -> ModelSpec:
    """Build a :class:`ModelSpec` from a registry entry, naming the field that is wrong."""
    try:
        check_name(name)
        files = {role: FileSpec(**data["files"][role]) for role in ROLES}
        return ModelSpec(
            name=name,
            display_name=data.get("display_name", name),
            architecture=data["architecture"],
            input_size=int(data["input_size"]),
            embedding_shape=tuple(int(v) for v in data["embedding_shape"]),
            low_res_size=int(data["low_res_size"]),
            preprocessing=dict(data["preprocessing"]),
            prompts=tuple(data["prompts"]),
            files=files,
            source=dict(data.get("source", {})),
            opset=int(data.get("opset", 17)),
            builtin=builtin,
            notes=data.get("notes", ""),
            fingerprint=dict(data.get("fingerprint", {})),
            point_domain=(PointDomain.from_json(data["point_domain"])
                          if data.get("point_domain") else None),
        )
    except KeyError as exc:
        raise ValueError(f"model registry entry {name!r} is invalid: missing {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model registry entry {name!r} is invalid: {exc}") from exc


def _builtin_entries() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("registry.json").read_text(encoding="utf-8")
    return json.loads(text)


def load_registry() -> dict[str, ModelSpec]:
    """All known models: built-in entries first, then user exports found in the cache."""
    specs = {name: spec_from_json(name, entry, builtin=True)
             for name, entry in _builtin_entries().items()}
    user_root = cache_dir() / "models"
    if user_root.is_dir():
        for spec_file in sorted(user_root.glob(f"*/{SPEC_FILENAME}")):
            name = spec_file.parent.name
            if name in specs:
                continue
            try:
                specs[name] = spec_from_json(name, json.loads(spec_file.read_text()), builtin=False)
            except (ValueError, json.JSONDecodeError) as exc:
                logger.warning("Ignoring user model %s: %s", spec_file, exc)
    return specs


def list_specs() -> list[ModelSpec]:
    """Known models in display order."""
    return list(load_registry().values())


def get_spec(name: str) -> ModelSpec:
    """The model called ``name``; a ``KeyError`` that lists the known names otherwise."""
    specs = load_registry()
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise KeyError(f"unknown model {name!r}; known models: {known}")
    return specs[name]
