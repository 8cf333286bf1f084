"""Model specs (``hardneg train --model``): parsing is cheap, builds nothing, and its errors
name the key, the value and what to pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardneg.models import ModelSpec, parse_model_spec
from hardneg.models.specs import open_clip_model_names
from tests.helpers.model_fixtures import OPEN_CLIP_CONFIG, write_spec_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_spec_files(tmp_path_factory.mktemp("specs"))


def test_parse_good_specs(files, tmp_path, monkeypatch):
    assert parse_model_spec("builtin") == ModelSpec("builtin", None, None)
    assert parse_model_spec(" open_clip:ViT-B-32 ") == ModelSpec("open_clip", "ViT-B-32")
    spec = parse_model_spec(f"open_clip:{files['config']}", str(files["weights"]))
    assert spec == ModelSpec("open_clip", str(files["config"]), str(files["weights"]))
    assert parse_model_spec(f"hf_clip:{files['hf']}") == ModelSpec("hf_clip", str(files["hf"]))
    monkeypatch.chdir(files["config"].parent)  # relative paths become absolute
    relative = parse_model_spec(f"open_clip:{files['config'].name}", files["weights"].name)
    assert relative == spec and parse_model_spec(str(spec), spec.pretrained) == spec


def test_open_clip_names_are_open_clips_own_list():
    import open_clip

    names = open_clip_model_names()
    # list_models() also holds configs other tests registered (add_model_config)
    registered = {Path(p).stem for p in getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", [])}
    shipped = [n for n in open_clip.list_models() if n not in registered or n in names]
    assert names == sorted(shipped)
    assert "ViT-B-32" in names and len(names) > 50


def test_parsing_is_fast_and_builds_nothing(files):
    start = time.perf_counter()
    for _ in range(5):
        parse_model_spec("builtin")
        parse_model_spec("open_clip:ViT-L-14")
        parse_model_spec(f"open_clip:{files['config']}", str(files["weights"]))
        parse_model_spec(f"hf_clip:{files['hf']}")
        with pytest.raises(ValueError):
            parse_model_spec("open_clip:ViT-B-23")  # reads every shipped config for matches
    assert time.perf_counter() - start < 2.0


@pytest.mark.slow
def test_parsing_does_not_import_open_clip(files):
    """A fresh interpreter: parsing open_clip specs leaves open_clip (seconds to import) out."""
    code = (
        "import sys\n"
        "from hardneg.models.specs import parse_model_spec\n"
        f"parse_model_spec('open_clip:{files['config']}', '{files['weights']}')\n"
        "parse_model_spec('open_clip:ViT-B-32')\n"
        "print('open_clip' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def bad_json(root: Path, name: str, text: str) -> str:
    path = root / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("spec", "error", "says"),
    [
        ("", ValueError, "model.spec is empty: pass builtin, open_clip:NAME"),
        ("clip", ValueError, "model.spec='clip' is not a model spec: pass builtin"),
        ("builtin:x", ValueError, "model.spec='builtin:x' is not a model spec"),
        ("open_clip:", ValueError, "model.spec='open_clip:' names no model"),
        ("hf_clip: ", ValueError, "model.spec='hf_clip: ' names no model"),
        (
            "open_clip:ViT-B-23",
            ValueError,
            "model.spec='open_clip:ViT-B-23': unknown open_clip model 'ViT-B-23' "
            "(close matches: ViT-B-32,",
        ),
        ("open_clip:RN50", ValueError, "model.spec='open_clip:RN50': its image tower is a ResNet"),
        ("open_clip:ViT-B-16-SigLIP", ValueError, "its image tower is the timm model"),
        ("open_clip:hf-hub:timm/x", ValueError, "hf-hub:/local-dir: names are not supported"),
        ("open_clip:{root}/missing.json", FileNotFoundError, "no file '{root}/missing.json'"),
        ("open_clip:{broken}", ValueError, "is not valid JSON"),
        ("open_clip:{keyless}", ValueError, "needs the keys embed_dim, vision_cfg and text_cfg"),
        ("open_clip:{shadow}", ValueError, "is open_clip's own 'ViT-B-32' config"),
        ("open_clip:{custom}", ValueError, "its text tower is not open_clip's text transformer"),
        ("hf_clip:{root}/nope", FileNotFoundError, "no directory '{root}/nope'; pass hf_clip:DIR"),
        ("hf_clip:{root}", FileNotFoundError, "has no config.json, no weights"),
    ],
)
def test_bad_specs_name_the_key_value_and_fix(tmp_path, spec, error, says):
    paths = {
        "root": str(tmp_path),
        "broken": bad_json(tmp_path, "broken.json", "{"),
        "keyless": bad_json(tmp_path, "keyless.json", json.dumps({"embed_dim": 8})),
        "shadow": bad_json(tmp_path, "ViT-B-32.json", json.dumps(OPEN_CLIP_CONFIG)),
        "custom": bad_json(
            tmp_path, "custom.json", json.dumps({**OPEN_CLIP_CONFIG, "custom_text": True})
        ),
    }
    spec, says = spec.format(**paths), says.format(**paths)
    with pytest.raises(error) as info:
        parse_model_spec(spec)
    message = str(info.value)
    assert says in message and "\n" not in message
    assert message.startswith("model.spec")


def test_hf_dir_without_tokenizer_or_weights_is_rejected(files, tmp_path):
    for keep in (("config.json", "model.safetensors"), ("config.json", "tokenizer.json")):
        target = tmp_path / "_".join(keep)
        target.mkdir()
        for name in keep:
            (target / name).write_bytes((files["hf"] / name).read_bytes())
        with pytest.raises(FileNotFoundError, match=r"has no (tokenizer files|weights)"):
            parse_model_spec(f"hf_clip:{target}", key="--model")


def test_pretrained_errors(files, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        parse_model_spec("open_clip:ViT-B-32", "laion2b_s34b_b79k")
    assert str(info.value) == (
        "model.pretrained='laion2b_s34b_b79k' is not a file; nothing is downloaded: pass a "
        "local file with --pretrained PATH (e.g. open_clip_pytorch_model.bin)"
    )
    text_file = tmp_path / "weights.txt"
    text_file.write_text("x")
    with pytest.raises(ValueError, match=r"model.pretrained=.*weights.txt.*\.safetensors"):
        parse_model_spec("open_clip:ViT-B-32", str(text_file))
    for spec in ("builtin", f"hf_clip:{files['hf']}"):
        with pytest.raises(ValueError, match=r"--pretrained=.* is only for open_clip specs"):
            parse_model_spec(
                spec, str(files["weights"]), key="--model", pretrained_key="--pretrained"
            )
