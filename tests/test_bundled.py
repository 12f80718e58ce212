"""The bundled English->French model: shipped inside the package, small, and a working translator."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import call_main

from seqformer.io import load_weights
from seqformer.translator import Translator, default_model_dir

BUNDLED = default_model_dir()


@pytest.fixture(scope="module")
def bundled() -> Translator:
    return Translator.load()


def test_bundled_model_is_self_contained_small_and_attributed():
    config = json.loads((BUNDLED / "config.json").read_text())
    assert config["weights_dtype"] == "float16" and (config["src_lang"], config["tgt_lang"]) == ("en", "fr")
    names = {p.name for p in BUNDLED.iterdir()}
    assert {"model.safetensors", config["tokenizer"]["src"], "MODEL_CARD.md", "ABOUT-manythings.txt"} <= names
    assert sum(p.stat().st_size for p in BUNDLED.iterdir()) <= 25e6
    assert "CC-BY 2.0 FR" in (BUNDLED / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize(("english", "french_words"), [
    ("I love you.", ["aime"]),
    ("The cat is black.", ["chat"]),
    ("Where is the station?", ["gare", "?"]),
])
def test_bundled_model_translates_everyday_sentences(bundled, english, french_words):
    for beam in (1, 4):
        french = bundled.translate([english], beam_size=beam)[0]
        assert all(w in french.lower() for w in french_words), (beam, french)


def test_empty_input_gives_empty_output_and_several_sentences_are_each_translated(bundled):
    empty, two = bundled.translate(["", "The cat is black. Where is the station?"], beam_size=4)
    assert empty == ""
    assert "chat" in two.lower() and "gare" in two.lower()
    assert two == " ".join(bundled.translate(["The cat is black.", "Where is the station?"], beam_size=4))


def test_emoji_are_copied_not_translated(bundled):
    with_emoji, without = bundled.translate(["I love you 🍕!", "I love you!"], beam_size=4)
    assert "🍕" in with_emoji and "aime" in with_emoji.lower()
    assert with_emoji.replace("🍕", "").split() == without.split()


def test_cli_translates_with_the_bundled_model_by_default(bundled, capsys):
    assert call_main("translate", "I love you.") == 0
    assert capsys.readouterr().out == bundled.translate(["I love you."], beam_size=4)[0] + "\n"


def _export_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "export_bundled.py"
    spec = importlib.util.spec_from_file_location("export_bundled", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_swaps_in_a_complete_directory_or_leaves_the_old_one(model_dir, tmp_path, monkeypatch, capsys):
    export = _export_script()
    dst = tmp_path / "en-fr"
    dst.mkdir()
    (dst / "MODEL_CARD.md").write_text("card")
    (dst / "src.spm").write_text("a tokenizer an older model used")  # must not ship with the new one
    assert export.main(str(model_dir), str(dst)) == 0
    assert (dst / "MODEL_CARD.md").read_text() == "card" and not (dst / "src.spm").exists()
    assert json.loads((dst / "config.json").read_text())["weights_dtype"] == "float16"
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    exported, source = load_weights(dst / "model.safetensors"), load_weights(model_dir / "model.safetensors")
    assert exported.keys() == source.keys()  # was: only "translates to a non-empty list", which zeros pass
    for name, value in source.items():
        assert exported[name].dtype == torch.float16 and torch.equal(exported[name], value.half()), name

    monkeypatch.setattr(export, "MAX_BYTES", 1000)
    assert export.main(str(model_dir), str(dst)) == 1
    assert "over the 0 MB bound" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["en-fr"]  # no staging directory left behind
