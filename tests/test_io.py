"""Model directories: save -> load gives the same model and the same translations (fp32 and fp16)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import random_ids, src_batch, tiny_model, write_model_dir
from safetensors.torch import load_file

from seqformer.config import FORMAT_VERSION, DecodeConfig
from seqformer.decoding import generate
from seqformer.errors import ModelDirError
from seqformer.io import export_state, import_state, read_model_dir
from seqformer.model.packed import PackedLinear
from seqformer.model.transformer import Seq2SeqTransformer
from seqformer.translator import Translator

TEXTS = ["a b c", "j i h g f e d c", "a", "b b b b", "c a e g i"]


def _same_outputs(a, b, atol=0.0):
    src, mask = src_batch(random_ids([5, 3, 8], a.cfg.src_vocab_size, seed=0))
    tgt = torch.tensor(random_ids([6] * 3, a.cfg.tgt_vocab_size, seed=1))
    with torch.no_grad():
        torch.testing.assert_close(a(src, mask, tgt), b(src, mask, tgt), atol=atol, rtol=0)
        for cfg in (DecodeConfig(beam_size=1), DecodeConfig(beam_size=3, nbest=3)):
            got = [[h.tokens for h in n] for n in generate(a, src, mask, cfg)]
            assert got == [[h.tokens for h in n] for n in generate(b, src, mask, cfg)]


def test_round_trip_gives_identical_model_and_translations(model_dir, random_model):
    loaded = Translator.load(model_dir)
    assert loaded.model.cfg == random_model.cfg
    for name, value in random_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    _same_outputs(loaded.model, random_model)
    direct = Translator(random_model, read_model_dir(model_dir))
    for options in (dict(beam_size=1), dict(beam_size=4, nbest=2)):
        assert loaded.translate(TEXTS, **options) == direct.translate(TEXTS, **options)


@pytest.mark.parametrize("variant", [dict(), dict(share_embeddings=False, tie_output=False, final_logits_bias=True,
                                                  positional="learned", pre_norm=True)], ids=["tied", "untied"])
def test_round_trip_of_every_variant(tmp_path, spm_file, tokenizer, variant):
    vocab = tokenizer.src.get_piece_size()
    model = tiny_model(seed=21, src_vocab_size=vocab, tgt_vocab_size=vocab, **variant)
    write_model_dir(tmp_path / "m", model, spm_file)
    _same_outputs(Translator.load(tmp_path / "m").model, model)


def test_fp16_weights_load_as_the_rounded_model(tmp_path, random_model, spm_file):
    write_model_dir(tmp_path / "m", random_model, spm_file, dtype=torch.float16)
    stored = load_file(tmp_path / "m" / "model.safetensors")
    assert all(t.dtype == torch.float16 for t in stored.values())
    assert json.loads((tmp_path / "m" / "config.json").read_text())["weights_dtype"] == "float16"
    loaded = Translator.load(tmp_path / "m").model
    rounded = Seq2SeqTransformer(random_model.cfg).eval()
    with torch.no_grad():
        for name, p in rounded.state_dict().items():
            p.copy_(random_model.state_dict()[name].half().float())
    for name, p in loaded.state_dict().items():
        assert p.dtype == torch.float32
        assert torch.equal(p, rounded.state_dict()[name]), name
    _same_outputs(loaded, rounded)
    _same_outputs(loaded, random_model, atol=2e-2)  # fp16 rounding barely moves the logits


def test_shared_tensors_are_stored_once_and_restored_everywhere(tmp_path, random_model, spm_file):
    write_model_dir(tmp_path / "m", random_model, spm_file)
    stored = load_file(tmp_path / "m" / "model.safetensors")
    shared = [n for n in random_model.state_dict() if n.endswith("embed.weight")]
    assert len(shared) == 2 and sum(n in stored for n in shared) == 1
    loaded = Translator.load(tmp_path / "m").model
    assert loaded.encoder.embed.weight is loaded.decoder.embed.weight
    assert torch.equal(loaded.decoder.embed.weight, random_model.decoder.embed.weight)


def test_mismatched_weights_are_rejected():
    model = tiny_model()
    state = export_state(model)
    with pytest.raises(ModelDirError, match=r"missing \['[^']*\.fc1\.[^']*'.*\], unexpected \[\]"):
        import_state(tiny_model(), {k: v for k, v in state.items() if "fc1" not in k}, "test")
    with pytest.raises(ModelDirError, match=r"missing \[\], unexpected \['extra\.weight'\]"):
        import_state(tiny_model(), {**state, "extra.weight": torch.zeros(2)}, "test")
    with pytest.raises(ModelDirError, match="shape"):
        import_state(tiny_model(d_ff=32), state, "test")


def test_unknown_format_version_is_rejected(tmp_path, random_model, spm_file):
    write_model_dir(tmp_path / "m", random_model, spm_file)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION
    config["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"m/config.json: unsupported model format_version"):
        Translator.load(tmp_path / "m")


def test_int8_reaches_the_tied_output_projection_and_keeps_the_logits(tmp_path, spm_file, tokenizer):
    vocab = tokenizer.src.get_piece_size()
    model = tiny_model(seed=5, src_vocab_size=vocab, tgt_vocab_size=vocab, max_positions=24, tie_output=True)
    path = write_model_dir(tmp_path / "tied", model, spm_file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's deprecation notices for torch.ao are not the user's business
        fp32, int8 = Translator.load(path), Translator.load(path, quantize="int8")
    assert fp32.model.output is None  # loading without quantization keeps the tie (and its memory)
    assert isinstance(int8.model.output, torch.ao.nn.quantized.dynamic.Linear)
    src, mask = src_batch(random_ids([5, 3], vocab, seed=1))
    with torch.no_grad():
        hidden = fp32.model.decode(fp32.model.encode(src, mask), mask, src[:, :4])  # (B, T, D)
        ref, got = fp32.model.project(hidden), int8.model.project(hidden)  # (B, T, V)
    assert not torch.equal(ref, got)  # the projection itself now runs in int8 ...
    assert torch.allclose(ref, got, atol=0.05 * ref.abs().max().item())  # ... within int8 rounding

    # The whole model: every linear layer quantized, and the logits still the fp32 model's up to rounding.
    n_linear = sum(isinstance(m, (torch.nn.Linear, PackedLinear)) for m in fp32.model.modules()) + 1  # + untied output
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.model.modules()) == n_linear
    tgt = torch.tensor(random_ids([6, 6], vocab, seed=2))  # (B, T)
    with torch.no_grad():
        ref, got = fp32.model(src, mask, tgt), int8.model(src, mask, tgt)  # (B, T, V)
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() >= 0.9
    # L1 distance of the next-token distributions: 0.26 at most here (d_model 32 rounds coarsely); 2 = disjoint
    assert (ref.softmax(-1) - got.softmax(-1)).abs().sum(-1).max() < 0.4


def test_a_staged_directory_replaces_the_old_files_whole_or_not_at_all(tmp_path):
    from seqformer.io import staged_dir

    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("old config")
    (out / "model.safetensors").write_text("old weights")
    (out / "MODEL_CARD.md").write_text("card")
    with pytest.raises(RuntimeError), staged_dir(out) as stage:
        (stage / "model.safetensors").write_text("new weights")
        raise RuntimeError("interrupted before the config")  # a plain write left new weights + old config
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_text() == "old weights"

    link = tmp_path / "link"
    link.symlink_to(out)  # through a symlink: the target's files are replaced, the link stays a link
    with staged_dir(link) as stage:
        (stage / "config.json").write_text("new config")
        (stage / "model.safetensors").write_text("new weights")
    assert link.is_symlink() and (out / "config.json").read_text() == "new config"
    assert (out / "model.safetensors").read_text() == "new weights"
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelDirError, match="exists and is not a directory"), staged_dir(tmp_path / "file"):
        pass
    assert (tmp_path / "file").read_text() == "x"

    fresh = tmp_path / "new" / "model"
    with pytest.raises(RuntimeError), staged_dir(fresh):
        raise RuntimeError("a failed import")
    assert not fresh.exists()  # was: an empty folder left behind, as if something had been written
    with staged_dir(fresh) as stage:
        (stage / "config.json").write_text("config")
    assert (fresh / "config.json").is_file()


def test_a_config_written_before_the_init_field_reads_as_xavier(tmp_path, random_model, spm_file):
    # Every model saved before ModelConfig.init existed started from Xavier; with the default now "normal",
    # reading such a config.json as "normal" would mislabel it, and a --resume into its run directory
    # before the first checkpoint would draw the wrong first weights.
    from seqformer.training.trainer import _existing_model_config

    write_model_dir(tmp_path / "m", random_model, spm_file)
    assert read_model_dir(tmp_path / "m").model_cfg.init == random_model.cfg.init == "normal"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["model"]["init"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert read_model_dir(tmp_path / "m").model_cfg.init == "xavier"
    assert _existing_model_config(tmp_path / "m").init == "xavier"
