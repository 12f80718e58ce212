"""Configuration: frozen, validated on creation, unknown keys rejected, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from conftest import call_main

from seqformer.config import DecodeConfig, ModelConfig, TrainConfig, from_dict, load_recipe, to_dict
from seqformer.errors import ConfigError


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig, DecodeConfig])
def test_configs_are_frozen(cls):
    cfg = cls()
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, name, getattr(cfg, name))


@pytest.mark.parametrize("cls,fields,message", [
    (ModelConfig, dict(d_model=30, n_heads=4), "multiple of n_heads"),
    (ModelConfig, dict(d_model=0), "multiple of n_heads"),
    (ModelConfig, dict(n_heads=0), "n_heads must be >= 1"),  # was a ZeroDivisionError traceback
    (ModelConfig, dict(n_heads=-4, d_model=256), "n_heads must be >= 1"),  # was accepted: head_dim -64
    (ModelConfig, dict(src_vocab_size=0, tgt_vocab_size=0), "vocabulary sizes"),
    (ModelConfig, dict(n_encoder_layers=0), "at least one layer"),
    (ModelConfig, dict(d_ff=0), "d_ff"),
    (ModelConfig, dict(dropout=1.0), "dropout"),
    (ModelConfig, dict(attention_dropout=-0.1), "attention_dropout"),
    (ModelConfig, dict(activation="tanh"), "activation"),
    (ModelConfig, dict(positional="rotary"), "positional"),
    (ModelConfig, dict(sinusoid_layout="stacked"), "sinusoid_layout"),
    (ModelConfig, dict(max_positions=1), "max_positions"),
    (ModelConfig, dict(src_vocab_size=100, tgt_vocab_size=200), "share_embeddings"),
    (ModelConfig, dict(tgt_vocab_size=8000, eos_id=8000), "eos_id"),
    (ModelConfig, dict(pad_id=-1), "pad_id"),
    (ModelConfig, dict(init="kaiming"), "init must be one of"),
    (ModelConfig, dict(init_std=0.0), "init_std"),
    # accepted before: training produced NaN (or an IndexError when the source embedding zeroed its pad row)
    (ModelConfig, dict(init_std=math.inf), "init_std must be a finite number"),
    (ModelConfig, dict(layer_norm_eps=-1.0), "layer_norm_eps must be a finite number > 0"),
    (ModelConfig, dict(layer_norm_eps=math.nan), "layer_norm_eps"),
    (ModelConfig, dict(share_embeddings=False, src_vocab_size=3, tgt_vocab_size=8000),
     r"eos_id \(3\) outside the source vocabulary"),
    (TrainConfig, dict(lr=math.inf), "lr must be a finite number > 0"),
    (TrainConfig, dict(adam_eps=math.inf), "adam_eps must be a finite number"),
    (TrainConfig, dict(weight_decay=math.inf), "weight_decay must be a finite number"),
    (TrainConfig, dict(preset="huge"), "preset"),
    (TrainConfig, dict(vocab_size=8), "vocab_size"),
    (TrainConfig, dict(max_tokens=0), "max_tokens"),
    (TrainConfig, dict(update_freq=0), "update_freq"),
    (TrainConfig, dict(lr=0.0), "lr"),
    (TrainConfig, dict(label_smoothing=1.0), "label_smoothing"),
    (TrainConfig, dict(precision="fp8"), "precision"),
    (TrainConfig, dict(max_steps=-1), "limits"),
    (TrainConfig, dict(max_len=2), "max_len"),
    (TrainConfig, dict(spm_model_type="char"), "spm_model_type"),
    # accepted before, then trained uphill (negative clipping flips the gradient), stopped before the first
    # update, crashed at the first validation / log line, or were silently ignored
    (TrainConfig, dict(clip_norm=-1.0), "clip_norm must be >= 0"),
    (TrainConfig, dict(patience=-1), "patience"),
    (TrainConfig, dict(valid_beam_size=0), "valid_beam_size"),
    (TrainConfig, dict(log_every=0), "log_every must be >= 1"),
    (TrainConfig, dict(valid_every=0), "valid_every must be >= 1"),
    (TrainConfig, dict(save_every=0), "save_every must be >= 1"),
    (TrainConfig, dict(weight_decay=-0.1), "weight_decay"),
    (TrainConfig, dict(spm_sample_lines=0), "spm_sample_lines"),
    (TrainConfig, dict(seed=2**64), "seed must be a 64-bit integer"),  # was a traceback at the first batch
    (TrainConfig, dict(adam_betas=(0.9, 1.0)), "adam_betas"),
    (TrainConfig, dict(adam_eps=-1e-9), "adam_eps"),
    (TrainConfig, dict(adam_eps=0.0), "adam_eps must be a finite number >= 1.18e-38"),  # NaN weights at update 1
    (TrainConfig, dict(adam_eps=1e-50), "adam_eps"),  # 0 in float32
    (TrainConfig, dict(tokenizer="en/spm.model,fr/spm.model"), "same file name"),  # one overwrote the other
    (TrainConfig, dict(tokenizer="a.spm,b.spm,c.spm"), "found 3"),
    (DecodeConfig, dict(beam_size=0), "beam_size"),
    (DecodeConfig, dict(beam_size=2, nbest=3), "nbest"),
    (DecodeConfig, dict(nbest=0), "nbest"),
    (DecodeConfig, dict(sampling=True, temperature=0.0), "temperature must be a finite number >= 1e-06"),
    (DecodeConfig, dict(sampling=True, top_k=-1), "top_k must be >= 0"),
    (DecodeConfig, dict(sampling=True, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (DecodeConfig, dict(sampling=True, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (DecodeConfig, dict(temperature=0.7, top_p=0.9), r"without sampling \(temperature=0.7, top_p=0.9\)"),  # were ignored
    (DecodeConfig, dict(top_k=10), r"without sampling \(top_k=10\)"),
    (DecodeConfig, dict(seed=3), r"without sampling \(seed=3\)"),
    (DecodeConfig, dict(max_len_b=0), "max_len_b"),
    (DecodeConfig, dict(batch_size=0), "batch_size"),
    # values float32 cannot carry through the search (they crashed it with NaN probabilities or overflow)
    (DecodeConfig, dict(sampling=True, temperature=1e-320), "temperature must be a finite number >= 1e-06"),
    (DecodeConfig, dict(sampling=True, temperature=math.inf), "temperature must be a finite number"),
    (DecodeConfig, dict(sampling=True, temperature=math.nan), "temperature must be a finite number"),
    (DecodeConfig, dict(length_penalty=math.nan), "length_penalty must be a finite number"),
    (DecodeConfig, dict(max_len_a=math.inf), "max_len_a"),
])
def test_bad_values_are_rejected(cls, fields, message):
    with pytest.raises(ConfigError, match=message):
        cls(**fields)


def test_good_edge_values_are_accepted():
    ModelConfig(src_vocab_size=100, tgt_vocab_size=200, share_embeddings=False, dropout=0.0)
    DecodeConfig(sampling=True, beam_size=1, nbest=5)  # sampling draws nbest samples, no beam needed
    assert TrainConfig(adam_betas=[0.9, 0.99]).adam_betas == (0.9, 0.99)
    TrainConfig(tokenizer="en/src.spm,fr/tgt.spm")
    TrainConfig(tokenizer="spm.model,spm.model")
    TrainConfig(tokenizer="./a/spm.model,a/spm.model")  # one file, spelled twice
    TrainConfig(clip_norm=0.0, patience=0, weight_decay=0.0, adam_betas=(0.0, 0.0))  # the "off" values


@pytest.mark.parametrize("cfg", [ModelConfig(d_model=64, n_heads=2, pre_norm=True), TrainConfig(lr=3e-4, train="x.tsv"),
                                 DecodeConfig(beam_size=5, nbest=2, top_p=0.9, sampling=True)], ids=["model", "train", "decode"])
def test_dict_round_trip(cfg):
    data = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(type(cfg), data) == cfg


@pytest.mark.parametrize(("cls", "data", "message"), [
    (TrainConfig, {"lr": "0.001"}, "TrainConfig.lr: expected a number, found '0.001'"),
    (TrainConfig, {"max_steps": 1.5}, "TrainConfig.max_steps: expected an integer, found 1.5"),
    (TrainConfig, {"max_steps": True}, "TrainConfig.max_steps: expected an integer, found True"),
    (TrainConfig, {"adam_betas": 0.9}, "TrainConfig.adam_betas: expected a list, found 0.9"),
    (ModelConfig, {"pre_norm": 1}, "ModelConfig.pre_norm: expected true or false, found 1"),
    (ModelConfig, {"activation": None}, "ModelConfig.activation: expected a string, found None"),
    (DecodeConfig, {"seed": "7"}, "DecodeConfig.seed: expected an integer, found '7'"),
])
def test_a_value_of_the_wrong_json_type_names_the_field(cls, data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(cls, data)
    assert str(err.value) == message


def test_json_values_of_the_right_type_are_accepted():
    assert from_dict(TrainConfig, {"lr": 1, "adam_betas": [0.9, 0.99]}).lr == 1  # an integer is a number
    assert from_dict(DecodeConfig, {"seed": None}).seed is None
    assert from_dict(DecodeConfig, {"seed": 3, "sampling": True}).seed == 3


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match="unknown ModelConfig field.*d_modle"):
        from_dict(ModelConfig, {"d_modle": 64})
    assert from_dict(ModelConfig, {"d_modle": 64, "d_model": 64, "n_heads": 2}, strict=False).d_model == 64


def test_recipes_are_validated(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"train": {"lr": 1e-3}, "model": {"d_model": 64}}))
    assert load_recipe(path) == ({"lr": 1e-3}, {"d_model": 64})
    for bad, message in [({"train": {}, "optim": {}}, "unknown section"), ({"train": {"lrr": 1}}, "lrr"),
                         ({"model": {"layers": 2}}, "layers"), ({"train": {"lr": -1.0}}, "lr must be a finite number > 0")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            load_recipe(path)


def test_bad_recipe_on_the_command_line_is_one_line(tmp_path, capsys):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"train": {"warmup": 10}}))
    assert call_main("train", "--config", path, "--train", "x.tsv", "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warmup" in err[0] and err[0].startswith("seqformer: error: ")


def test_a_recipe_trains_with_its_fields_and_flags_override_them(data_dir, tmp_path):
    """`train --config R --max-steps 5`: the recipe's training and model fields are used, a flag wins."""
    recipe = {"train": {"train": str(data_dir / "train.tsv"), "tokenizer": str(data_dir / "spm.model"),
                        "preset": "tiny", "max_steps": 3, "max_tokens": 80, "warmup_steps": 2, "precision": "fp32",
                        "threads": 1, "log_every": 1, "save_every": 100, "seed": 3},
              "model": {"d_model": 32, "n_heads": 2, "d_ff": 48, "n_encoder_layers": 1, "n_decoder_layers": 1}}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    out = tmp_path / "run"
    assert call_main("train", "--config", tmp_path / "recipe.json", "--max-steps", "5", "--out", out, "--quiet") == 0
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5]  # the flag, not the recipe's 3
    model = json.loads((out / "config.json").read_text())["model"]
    assert (model["d_model"], model["d_ff"], model["n_encoder_layers"]) == (32, 48, 1)  # the recipe's, not "tiny"'s
    assert json.loads((out / "training.json").read_text())["train_config"]["max_tokens"] == 80
