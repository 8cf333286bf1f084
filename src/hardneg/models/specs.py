"""Model specs: which image-text model ``hardneg train --model SPEC`` trains.

- ``builtin``: the DigitScenes towers (image tower trained from scratch, frozen MiniLM text);
- ``open_clip:NAME``: an open_clip CLIP, NAME one of ``open_clip.list_models()`` (ViT image
  tower, open_clip's own text transformer) or the path of an open_clip model-config JSON;
  weights from ``--pretrained FILE`` (random init without it);
- ``hf_clip:DIR``: a ``transformers.CLIPModel.save_pretrained`` directory with its tokenizer
  (and image processor).

Nothing is downloaded. :func:`parse_model_spec` only checks names and files (it does not import
open_clip, which takes seconds: the names come from the JSON files open_clip ships), so a
config can be validated before any model is built; :func:`build_clip_towers` (in
:mod:`hardneg.models.clip_towers`) builds the towers. See ``docs/models.md``.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg.models.hf_clip import WEIGHT_FILES

KINDS = ("builtin", "open_clip", "hf_clip")
#: Suffixes of a ``--pretrained`` weights file (open_clip's ``load_checkpoint``).
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")
_USAGE = "pass builtin, open_clip:NAME, open_clip:CONFIG.json or hf_clip:DIR (see docs/models.md)"
_SUPPORTED = (
    "hardneg trains open_clip CLIP models with a ViT image tower and open_clip's own text "
    "transformer (e.g. open_clip:ViT-B-32)"
)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec (build it with :func:`parse_model_spec`).

    Attributes:
        kind: ``"builtin"``, ``"open_clip"`` or ``"hf_clip"``.
        name: open_clip model name, or the absolute path of an open_clip model-config JSON,
            or the absolute path of the HF directory; None for builtin.
        pretrained: absolute path of the open_clip weights file (None: random init).
    """

    kind: str
    name: str | None = None
    pretrained: str | None = None

    def __str__(self) -> str:
        """The spec string this spec parses from (``open_clip:ViT-B-32``)."""
        return self.kind if self.name is None else f"{self.kind}:{self.name}"


def parse_model_spec(
    spec: str,
    pretrained: str | None = None,
    key: str = "model.spec",
    pretrained_key: str = "model.pretrained",
) -> ModelSpec:
    """Check a model spec string (and its weights file) without building anything.

    Args:
        spec: ``builtin``, ``open_clip:NAME``, ``open_clip:PATH.json`` or ``hf_clip:DIR``.
        pretrained: local weights file for an open_clip spec (None: random init).
        key, pretrained_key: the config keys (or flags) named in error messages.

    Returns:
        a :class:`ModelSpec` with absolute paths.

    Raises:
        ValueError: malformed spec, unknown or unsupported open_clip model, ``pretrained``
            with a spec that takes none.
        FileNotFoundError: a config JSON, HF directory (or its files) or weights file is
            missing.
        ImportError: an open_clip spec without open_clip_torch installed.

    Example:
        >>> parse_model_spec("builtin")
        ModelSpec(kind='builtin', name=None, pretrained=None)
        >>> parse_model_spec("open_clip:ViT-B-32").name  # doctest: +SKIP
        'ViT-B-32'
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{key} is empty: {_USAGE}")
    kind, sep, rest = spec.strip().partition(":")
    if kind not in KINDS or (kind == "builtin") == bool(sep):
        raise ValueError(f"{key}={spec!r} is not a model spec: {_USAGE}")
    if kind != "open_clip" and pretrained is not None:
        reason = "loads the weights in DIR" if kind == "hf_clip" else "trains from scratch"
        raise ValueError(
            f"{pretrained_key}={pretrained!r} is only for open_clip specs ({key}={spec!r} "
            f"{reason}): drop {pretrained_key}"
        )
    if kind == "builtin":
        return ModelSpec("builtin")
    if not rest.strip():
        raise ValueError(f"{key}={spec!r} names no model: {_USAGE}")
    if kind == "hf_clip":
        return ModelSpec("hf_clip", _check_hf_dir(rest.strip(), key, spec))
    name = _check_open_clip_name(rest.strip(), key, spec)
    weights = None if pretrained is None else _check_weights(pretrained, pretrained_key)
    return ModelSpec("open_clip", name, weights)


def open_clip_config_dir() -> Path:
    """The ``model_configs`` directory of the installed open_clip (found without importing it).

    Raises:
        ImportError: open_clip_torch is not installed.
    """
    found = importlib.util.find_spec("open_clip")
    if found is None or not found.submodule_search_locations:
        raise ImportError(
            "open_clip specs need open_clip_torch: `pip install 'hardneg[open_clip]'`"
        )
    return Path(next(iter(found.submodule_search_locations))) / "model_configs"


def open_clip_model_names() -> list[str]:
    """``open_clip.list_models()`` read from the shipped JSON files (no open_clip import)."""
    names = []
    for path in open_clip_config_dir().glob("*.json"):
        if _is_model_config(_read_json(path)):
            names.append(path.stem)
    return sorted(names)


def is_config_path(name: str) -> bool:
    """True when an open_clip spec's NAME is a config-JSON path rather than a model name."""
    return name.lower().endswith(".json") or "/" in name or "\\" in name


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _is_model_config(cfg: Any) -> bool:
    return isinstance(cfg, dict) and all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg"))


def _unsupported(cfg: dict[str, Any], name: str) -> str | None:
    """Why the OpenCLIP adapter cannot wrap the model of ``cfg`` (None: it can)."""
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if "timm_model_name" in vision:
        return f"its image tower is the timm model {vision['timm_model_name']!r}"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is a ResNet"
    if cfg.get("custom_text") or "hf_model_name" in text or "multimodal_cfg" in cfg:
        return "its text tower is not open_clip's text transformer (CustomTextCLIP/CoCa)"
    if "hf_tokenizer_name" in text or "siglip" in name.lower():
        return "its tokenizer would be downloaded from the Hugging Face Hub"
    return None


def _check_open_clip_name(name: str, key: str, spec: str) -> str:
    builtin_dir = open_clip_config_dir()
    if name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(
            f"{key}={spec!r}: open_clip's hf-hub:/local-dir: names are not supported (nothing "
            "is downloaded): pass open_clip:NAME or open_clip:CONFIG.json and the weights "
            "file with --pretrained PATH"
        )
    if is_config_path(name):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"{key}={spec!r}: no file {str(path)!r}; pass the path of an open_clip "
                "model-config JSON (embed_dim, vision_cfg, text_cfg) or a name from "
                "open_clip.list_models()"
            )
        try:
            cfg = _read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{key}={spec!r}: {path} is not valid JSON ({err})") from err
        if not _is_model_config(cfg):
            raise ValueError(
                f"{key}={spec!r}: {path} is not an open_clip model config; it needs the keys "
                "embed_dim, vision_cfg and text_cfg (like open_clip's model_configs/*.json)"
            )
        shadowed = builtin_dir / f"{path.stem}.json"
        if shadowed.is_file() and shadowed.resolve() != path:
            raise ValueError(
                f"{key}={spec!r}: the file name {path.name!r} is open_clip's own "
                f"{path.stem!r} config (open_clip registers configs by file name); rename it"
            )
        resolved = str(path)
    else:
        path = builtin_dir / f"{name}.json"
        cfg = _read_json(path) if path.is_file() else None
        if not _is_model_config(cfg):
            close = difflib.get_close_matches(name, open_clip_model_names(), n=5, cutoff=0.5)
            hint = f"close matches: {', '.join(close)}" if close else "see open_clip.list_models()"
            raise ValueError(
                f"{key}={spec!r}: unknown open_clip model {name!r} ({hint}); pass a name from "
                "open_clip.list_models() or the path of a model-config JSON"
            )
        resolved = name
    reason = _unsupported(cfg, path.stem)
    if reason:
        raise ValueError(f"{key}={spec!r}: {reason}; {_SUPPORTED}")
    return resolved


def _check_weights(pretrained: str, pretrained_key: str) -> str:
    path = Path(pretrained).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{pretrained_key}={pretrained!r} is not a file; nothing is downloaded: pass a "
            "local file with --pretrained PATH (e.g. open_clip_pytorch_model.bin)"
        )
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"{pretrained_key}={pretrained!r}: expected a weights file ending in "
            f"{', '.join(WEIGHT_SUFFIXES)} (a state_dict or an open_clip training checkpoint)"
        )
    return str(path)


def _check_hf_dir(directory: str, key: str, spec: str) -> str:
    path = Path(directory).expanduser().resolve()
    fix = (
        "pass hf_clip:DIR with a local CLIPModel directory (config.json, weights, tokenizer "
        "files), e.g. from `huggingface-cli download openai/clip-vit-base-patch32 "
        "--local-dir DIR` on a machine with internet"
    )
    if not path.is_dir():
        raise FileNotFoundError(f"{key}={spec!r}: no directory {str(path)!r}; {fix}")
    missing = [
        what
        for what, names in (
            ("config.json", ("config.json",)),
            ("weights (model.safetensors/pytorch_model.bin)", WEIGHT_FILES),
            ("tokenizer files (tokenizer.json/vocab.json)", _TOKENIZER_FILES),
        )
        if not any((path / n).is_file() for n in names)
    ]
    if missing:
        raise FileNotFoundError(f"{key}={spec!r}: {path} has no {', no '.join(missing)}; {fix}")
    return str(path)
