"""Parity of imported Marian / OPUS-MT checkpoints with Hugging Face transformers.

Small random ``MarianMTModel``s are built locally (tests/marian_fixture.py: tiny SentencePiece
models, vocab.json ids shuffled against SentencePiece's, a final_logits_bias favouring </s>)
and compared on logits, tokenisation, detokenisation, greedy and beam search.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from marian_fixture import SRC_WORDS, hf_length_limit, make_marian_dir, sentences  # noqa: E402
from transformers import MarianMTModel, MarianTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from seqformer.cli import main  # noqa: E402
from seqformer.config import DecodeConfig  # noqa: E402
from seqformer.data.batching import encode_source  # noqa: E402
from seqformer.decoding import generate  # noqa: E402
from seqformer.decoding.common import max_lengths  # noqa: E402
from seqformer.errors import ConfigError  # noqa: E402
from seqformer.marian import import_marian, is_marian_dir, load_marian, read_marian  # noqa: E402
from seqformer.model.embeddings import sinusoid_table  # noqa: E402
from seqformer.translator import Translator  # noqa: E402

hf_logging.set_verbosity_error()

CONFIGS = {
    "shared-swish": dict(seed=0),
    "separate-relu": dict(separate=True, activation="relu", seed=1),
    "shared-gelu-untied-unscaled": dict(activation="gelu", tie_output=False, scale_embedding=False, seed=2),
    "separate-silu-untied": dict(separate=True, activation="silu", tie_output=False, seed=3),
}
TEXTS = [">>fra<< " + s for s in sentences(SRC_WORDS, 7, seed=11)] + [
    "The cat sat on the mat, near Zürich (Ω)!",
    "a",
    ">>deu<< " + sentences(SRC_WORDS, 1, seed=5, min_len=25, max_len=25)[0],
]
A, B = 1.0, 4  # length limit: src_len * A + B tokens
EOS_BIAS = 6.0  # some hypotheses end by themselves, some at the limit


@pytest.fixture(scope="module", params=list(CONFIGS))
def marian(request, tmp_path_factory):
    """(HF directory, HF model, HF tokenizer) for one configuration."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = make_marian_dir(tmp_path_factory.mktemp(request.param), eos_bias=EOS_BIAS, **CONFIGS[request.param])
        tok = MarianTokenizer.from_pretrained(path)
    return path, MarianMTModel.from_pretrained(path).eval(), tok


def _batch(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def test_split_sinusoids_equal_hf_table():
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    for n, dim in ((64, 16), (512, 512), (30, 7)):
        assert torch.equal(MarianSinusoidalPositionalEmbedding(n, dim).create_weight(), sinusoid_table(n, dim, "split"))


def test_detects_and_converts(marian):
    path, hf, _ = marian
    assert is_marian_dir(path) and not is_marian_dir(path / "missing")
    imp = read_marian(path)
    cfg, hc = imp.model_cfg, hf.config
    assert (cfg.pad_id, cfg.eos_id, cfg.decoder_start_id) == (hc.pad_token_id, hc.eos_token_id, hc.pad_token_id)
    assert cfg.sinusoid_layout == "split" and not cfg.pre_norm and cfg.max_positions == hc.max_position_embeddings
    enc, dec = hf.get_encoder().embed_tokens.weight, hf.get_decoder().embed_tokens.weight
    assert cfg.share_embeddings == (enc.shape == dec.shape and torch.equal(enc, dec))
    assert cfg.tie_output == bool(hc.tie_word_embeddings)
    assert torch.equal(imp.tensors["final_logits_bias"], hf.final_logits_bias[0])


def test_tokenisation_matches(marian):
    path, _, tok = marian
    ours = Translator.load(path).tokenizer
    ids, mask = _batch(tok, TEXTS + [""])
    expected = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    got = [encode_source(s, tok.eos_token_id, 512) for s in ours.encode_src(TEXTS + [""])]
    assert got == expected
    assert ours.src_pieces(">>fra<< the cat")[0] == ">>fra<<"
    gen = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, len(tok.target_encoder if tok.separate_vocabs else tok.encoder), (12, 9), generator=gen)
    assert ours.decode_tgt(seqs.tolist()) == tok.batch_decode(seqs, skip_special_tokens=True)


def test_logits_match(marian):
    path, hf, tok = marian
    _, model = load_marian(path)
    src, mask = _batch(tok, TEXTS)
    tgt_in = torch.randint(0, model.cfg.tgt_vocab_size, (src.size(0), 11), generator=torch.Generator().manual_seed(1))
    tgt_in[:, 0] = model.cfg.decoder_start_id
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt_in).logits
        got = model(src, ~mask.bool(), tgt_in)
    torch.testing.assert_close(got, expected, atol=5e-4, rtol=1e-4)


def test_int8_logits_match_hugging_face_quantized_the_same_way(marian):
    """seqformer's --quantize int8 is PyTorch's dynamic int8 on every linear layer, the output projection
    included: the same quantization applied to MarianMTModel gives the same logits (a dropped
    final_logits_bias, a layer left in fp32 or one quantized twice would not)."""
    import copy

    path, hf, tok = marian
    int8 = Translator.load(path, quantize="int8").model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(hf), {torch.nn.Linear}, dtype=torch.qint8)
    src, mask = _batch(tok, TEXTS)
    tgt_in = torch.randint(0, int8.cfg.tgt_vocab_size, (src.size(0), 11), generator=torch.Generator().manual_seed(1))
    tgt_in[:, 0] = int8.cfg.decoder_start_id
    with torch.no_grad():
        expected = hf_int8(input_ids=src, attention_mask=mask, decoder_input_ids=tgt_in).logits
        fp32 = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt_in).logits
        got = int8(src, ~mask.bool(), tgt_in)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)  # measured: equal up to 2e-6
    assert (got - fp32).abs().max() > 0.1  # and quantized for real: int8 rounding moves these logits by 1.7-11


def _hf_generate(hf, src, mask, beams: int, limits: torch.Tensor):
    with torch.no_grad():
        out = hf.generate(
            input_ids=src, attention_mask=mask, num_beams=beams, do_sample=False, early_stopping=True,
            length_penalty=1.0, max_new_tokens=int(limits.max()) + 2, bad_words_ids=[[hf.config.pad_token_id]],
            logits_processor=[hf_length_limit(limits.repeat_interleave(beams), hf.config.eos_token_id)],
            output_scores=True, return_dict_in_generate=True,
        )
    seqs = []
    for row in out.sequences[:, 1:].tolist():
        seqs.append(row[: row.index(hf.config.eos_token_id)] if hf.config.eos_token_id in row else row)
    return out, seqs


@pytest.mark.parametrize("beams", [1, 4])
def test_search_matches_generate(marian, beams):
    path, hf, tok = marian
    translator = Translator.load(path)
    src, mask = _batch(tok, TEXTS)
    pad_mask = ~mask.bool()
    cfg = DecodeConfig(beam_size=beams, max_len_a=A, max_len_b=B)
    limits = max_lengths((~pad_mask).sum(1), A, B, translator.model.cfg.max_positions - 1)
    out, expected = _hf_generate(hf, src, mask, beams, limits)
    hyps = generate(translator.model, src, pad_mask, cfg)
    assert [h[0].tokens for h in hyps] == expected
    assert any(len(e) < lim for e, lim in zip(expected, limits.tolist()))  # not every sentence hits the limit
    if beams > 1:  # same length-normalised scores (log p / length**alpha, </s> counted)
        torch.testing.assert_close(torch.tensor([h[0].score for h in hyps], dtype=torch.float64), out.sequences_scores.double(),
                                   atol=2e-4, rtol=0)
    texts = translator.translate(TEXTS, split=False, beam_size=beams, max_len_a=A, max_len_b=B)
    assert texts == tok.batch_decode(out.sequences, skip_special_tokens=True)


def test_language_tag_kept_for_every_sentence(marian):
    path, _, _ = marian
    translator = Translator.load(path)
    joined = translator.translate([">>fra<< The cat sat. A dog ran far away."], beam_size=1)
    parts = translator.translate([">>fra<< The cat sat.", ">>fra<< A dog ran far away."], beam_size=1)
    assert joined == [" ".join(p for p in parts if p)]  # a sentence translated as nothing adds no space


def test_import_cli_and_pytorch_bin(marian, tmp_path):
    path, _, _ = marian
    out = tmp_path / "imported"
    assert main(["import-marian", str(path), str(out)]) == 0
    direct, imported = Translator.load(path), Translator.load(out)
    assert imported.dir.meta["format_version"] == 1 and imported.dir.meta["tokenizer"]["lang_tags"] is True
    assert imported.translate(TEXTS, beam_size=2) == direct.translate(TEXTS, beam_size=2)

    legacy = tmp_path / "legacy"  # an old-style checkpoint: pickle-free torch.load of pytorch_model.bin
    shutil.copytree(path, legacy)
    from safetensors.torch import load_file

    torch.save(load_file(legacy / "model.safetensors"), legacy / "pytorch_model.bin")
    (legacy / "model.safetensors").unlink()
    assert Translator.load(legacy).translate(TEXTS, beam_size=2) == direct.translate(TEXTS, beam_size=2)


def test_importing_into_the_hugging_face_directory_itself_is_refused(marian, tmp_path, capsys):
    path, _, _ = marian
    before = (path / "config.json").read_bytes()
    assert main(["import-marian", str(path), str(path)]) == 1
    assert "must not be the Hugging Face directory itself" in capsys.readouterr().err
    assert (path / "config.json").read_bytes() == before and not (path / "marian_config.json").exists()


def test_a_language_tag_the_model_does_not_know_is_warned_of(marian):
    # it reached the model as <unk> without a word: the model then chose the target language itself
    path, _, _ = marian
    translator = Translator.load(path)
    body = TEXTS[0].removeprefix(">>fra<< ")
    known = translator.tokenizer.known_lang_tags()  # the fixture's separate source vocabulary has no tags
    assert known in ([">>deu<<", ">>fra<<", ">>spa<<"], [])
    if known:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            translator.translate([TEXTS[0]], beam_size=1)  # a tag it knows
    have = r"its tags: >>deu<<, >>fra<<, >>spa<<" if known else "it has none"
    with pytest.warns(UserWarning, match=rf"language tag\(s\) >>fr<<, >>xyz<< not in the model's vocabulary \({have}\)"):
        translator.translate([f">>fr<< {body}", f">>xyz<< {body}"], beam_size=1)


def test_source_letters_the_source_vocabulary_cannot_spell_are_warned_of_by_its_own_unk_id(tmp_path):
    # the warning looked for the model's (target) <unk> id in the source ids: with a separate source
    # vocabulary whose <unk> has another id, lost letters went unmentioned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = make_marian_dir(tmp_path / "hf", separate=True, seed=1)
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    other = next(p for p, i in vocab.items() if i == 7)  # an ordinary piece trades ids with <unk>
    vocab["<unk>"], vocab[other] = vocab[other], vocab["<unk>"]
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    translator = Translator.load(path)
    assert translator.tokenizer.src_unk_id == 7 != translator.model.cfg.unk_id
    ids = translator.tokenizer.encode_src(["The cat sat 日"])[0]
    assert 7 in ids and translator.model.cfg.unk_id not in ids  # the old check finds nothing to warn of
    with pytest.warns(UserWarning, match=r"^1 character\(s\) outside the model's vocabulary .*: 日$"):
        translator.translate(["The cat sat 日"], beam_size=1)


def test_a_stray_target_vocab_beside_a_shared_vocabulary_is_not_read(tmp_path):
    # MarianTokenizer reads target_vocab.json only when tokenizer_config.json says separate_vocabs; a config
    # without the key and a leftover file numbered the target pieces with the wrong table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = make_marian_dir(tmp_path / "hf", seed=4)
    before = Translator.load(path).translate(TEXTS[:4], beam_size=1)
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("separate_vocabs", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    stray = dict(zip(vocab, reversed(list(vocab.values()))))  # the same pieces, other ids
    (path / "target_vocab.json").write_text(json.dumps(stray, ensure_ascii=False), encoding="utf-8")
    assert Translator.load(path).translate(TEXTS[:4], beam_size=1) == before


def test_an_id_past_the_vocabulary_table_is_not_printed(marian):
    path, _, _ = marian
    tok = Translator.load(path).tokenizer
    vocab = tok.tgt_vocab or tok.src_vocab
    word = next(i for i, p in sorted(vocab.pieces.items()) if p.startswith("\u2581") and len(p) > 2)
    assert tok.decode_tgt([[word, len(vocab) + 3]]) == tok.decode_tgt([[word]])  # was: "... ⁇"


def test_import_refuses_a_dtype_it_does_not_write(marian, tmp_path):
    path, _, _ = marian
    with pytest.raises(ConfigError, match="dtype must be float32 or float16, found 'bfloat16'"):
        import_marian(path, tmp_path / "out", dtype="bfloat16")  # was: float32 weights, "bfloat16" in config.json
    assert not (tmp_path / "out").exists()


def test_a_half_precision_checkpoint_with_its_position_tables_imports(marian, tmp_path):
    # torch.save(model.half().state_dict()) keeps Marian's fixed sinusoids rounded to fp16: they were refused as
    # "not Marian's sinusoid table" (compared within 1e-4, finer than fp16 rounds numbers near 1)
    import copy

    path, hf, _ = marian
    half = tmp_path / "half"
    shutil.copytree(path, half)
    (half / "model.safetensors").unlink()
    state = copy.deepcopy(hf).half().state_dict()
    assert any("embed_positions" in name for name in state)
    torch.save(state, half / "pytorch_model.bin")
    assert read_marian(half).model_cfg == read_marian(path).model_cfg


def test_what_is_wrong_with_the_weights_names_their_file(marian, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    path, _, _ = marian
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    tensors = load_file(bad / "model.safetensors")
    save_file({**tensors, "model.extra.weight": torch.zeros(2)}, bad / "model.safetensors")
    assert main(["import-marian", str(bad), str(tmp_path / "out")]) == 1
    # was "unexpected Marian tensors: [...]" alone: which of a script's directories, which file?
    assert f"{bad / 'model.safetensors'}: unexpected Marian tensors: ['model.extra.weight']" in capsys.readouterr().err


def test_importing_over_another_marian_directory_or_an_empty_path_is_refused(marian, tmp_path, capsys, monkeypatch):
    path, _, _ = marian
    other = tmp_path / "other"
    shutil.copytree(path, other)
    before = {f.name: f.read_bytes() for f in other.iterdir()}
    assert main(["import-marian", str(path), str(other)]) == 1  # the arguments swapped: was overwritten
    assert "holds a Hugging Face Marian model, which the import would overwrite" in capsys.readouterr().err
    monkeypatch.chdir(other)
    assert main(["import-marian", str(path), ""]) == 1  # "$OUT" unset: was the working directory
    assert capsys.readouterr().err.strip() == "seqformer: error: OUT_DIR is empty: give a path"
    assert {f.name: f.read_bytes() for f in other.iterdir()} == before


def test_importing_into_a_training_run_is_refused(marian, tmp_path, capsys):
    path, _, _ = marian
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("the run's own\n")
    assert main(["import-marian", str(path), str(run)]) == 1  # was: its config.json replaced, resume broken
    assert "is a training run (it holds checkpoints/)" in capsys.readouterr().err
    assert (run / "config.json").read_text() == "the run's own\n" and not (run / "model.safetensors").exists()


def test_importing_a_directory_with_malformed_config_json_names_the_line(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{\n  "model_type": "marian",\n')
    assert main(["import-marian", str(tmp_path / "hf"), str(tmp_path / "out")]) == 1
    assert "config.json:3: invalid JSON" in capsys.readouterr().err  # was "not a Hugging Face Marian directory"


def test_a_marian_config_without_a_needed_key_names_the_file_and_key(marian, tmp_path, capsys):
    path, _, _ = marian
    broken = tmp_path / "hf"
    shutil.copytree(path, broken)
    config = json.loads((broken / "config.json").read_text())
    del config["d_model"]
    (broken / "config.json").write_text(json.dumps(config))
    assert main(["import-marian", str(broken), str(tmp_path / "out")]) == 1
    assert f"{broken / 'config.json'}: missing key 'd_model'" in capsys.readouterr().err  # was: KeyError traceback


def test_threads_and_int8(marian, tmp_path, capsys, monkeypatch):
    path, _, _ = marian
    fp32 = Translator.load(path).translate(TEXTS, beam_size=2)
    int8 = Translator.load(path, quantize="int8")
    assert isinstance(int8.model.decoder.layers[0].ffn.fc1, torch.ao.nn.quantized.dynamic.Linear)
    assert len(int8.translate(TEXTS, beam_size=2)) == len(fp32)
    # the CLI's --quantize reaches the loader as it is given ("none": no quantization), and its output is the
    # quantized model's
    asked, load = [], Translator.load.__func__
    monkeypatch.setattr(Translator, "load", classmethod(lambda cls, p=None, quantize=None: asked.append(quantize)
                                                        or load(cls, p, quantize=quantize)))
    threads = torch.get_num_threads()
    try:
        for mode in ("int8", "none"):
            assert main(["translate", "--model", str(path), "--threads", "1", "--quantize", mode, "--beam-size", "2",
                         TEXTS[0]]) == 0
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert asked == ["int8", None]
    assert capsys.readouterr().out.splitlines() == [int8.translate(TEXTS[:1], beam_size=2)[0], fp32[0]]


def test_fine_tuning_an_imported_model_keeps_its_ids(marian, tmp_path):
    """--init-from an imported OPUS-MT model trains on the model's own piece ids (vocab.json, not
    SentencePiece's), with its </s>, and writes a directory that keeps that mapping and the language tags:
    one update at a negligible learning rate translates exactly as the imported model does."""
    from marian_fixture import TGT_WORDS

    from seqformer.config import TrainConfig
    from seqformer.io import read_model_dir
    from seqformer.training.data import prepare
    from seqformer.training.trainer import train

    path, _, _ = marian
    imported = tmp_path / "imported"
    assert main(["import-marian", str(path), str(imported)]) == 0
    srcs, tgts = [">>fra<< " + s for s in sentences(SRC_WORDS, 12, seed=21)], sentences(TGT_WORDS, 12, seed=22)
    tsv = tmp_path / "train.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in zip(srcs, tgts)), encoding="utf-8")
    cfg = TrainConfig(train=str(tsv), out=str(tmp_path / "tuned"), init_from=str(imported), max_steps=1, lr=1e-9,
                      precision="fp32", max_tokens=256, max_len=64, log_every=1)
    train(cfg, progress=False)

    source = read_model_dir(imported)
    (tmp_path / "scratch").mkdir()
    data = prepare(cfg, tmp_path / "scratch", init=source)
    want = [ids + [source.model_cfg.eos_id] for ids in source.tokenizer.encode_src(srcs)]
    assert sorted(s for s, _ in data.train) == sorted(want)
    assert sorted(t for _, t in data.train) == sorted(source.tokenizer.encode_tgt(tgts))
    tuned = Translator.load(tmp_path / "tuned")
    assert tuned.dir.meta["tokenizer"].get("lang_tags") is True
    expected = Translator.load(imported).translate(TEXTS, beam_size=2)
    assert tuned.translate(TEXTS, beam_size=2) == expected
    # averaging the run's checkpoints keeps the vocabulary tables too (it copied only the SentencePiece models)
    assert main(["average", str(tmp_path / "tuned"), "--last", "1", "--out", str(tmp_path / "avg")]) == 0
    assert Translator.load(tmp_path / "avg").translate(TEXTS, beam_size=2) == expected


def test_training_gradients_match(marian):
    # What the equal-recipe comparison with MarianMTModel rests on: on the same weights and batch (no
    # dropout), seqformer's training loss (label-smoothed, real target positions only) and every gradient
    # equal Hugging Face's (its loss computed as a Marian user would: logits everywhere, padding ignored).
    import torch.nn.functional as F

    from seqformer.data.batching import collate
    from seqformer.marian import _embeddings, convert_state
    from seqformer.training.optim import batch_loss

    path, _, _ = marian
    hf = MarianMTModel.from_pretrained(path).eval()  # eval: dropout off, gradients still flow
    _, model = load_marian(path)
    model.eval()
    cfg = model.cfg
    if cfg.final_logits_bias:  # a buffer in Hugging Face's model, a parameter here: hold it fixed as HF does
        model.final_logits_bias.requires_grad_(False)
    gen = torch.Generator().manual_seed(3)
    special = {cfg.pad_id, cfg.eos_id, cfg.unk_id, cfg.decoder_start_id}

    def ids(vocab: int, k: int) -> list[int]:
        allowed = torch.tensor([i for i in range(vocab) if i not in special])
        return allowed[torch.randint(len(allowed), (k,), generator=gen)].tolist()

    examples = [(ids(cfg.src_vocab_size, n) + [cfg.eos_id], ids(cfg.tgt_vocab_size, m))
                for n, m in ((7, 9), (3, 4), (11, 2), (5, 12))]  # ragged: padding on both sides
    b = collate(examples, cfg.pad_id, cfg.decoder_start_id, cfg.eos_id)

    loss, _, n = batch_loss(model, b, 0.1)
    (loss / n).backward()
    logits = hf(input_ids=b.src, attention_mask=(~b.src_pad_mask).long(), decoder_input_ids=b.tgt_in).logits
    labels = b.tgt_out.masked_fill(b.tgt_out.eq(cfg.pad_id), -100)
    theirs = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=0.1,
                             reduction="sum")
    (theirs / n).backward()
    torch.testing.assert_close(loss, theirs, atol=1e-4, rtol=1e-5)

    grads = {name: p.grad for name, p in hf.named_parameters() if p.grad is not None}
    grads["final_logits_bias"] = torch.zeros_like(hf.final_logits_bias)  # held fixed on both sides
    enc, dec, out = _embeddings(hf.config.to_dict(), grads)
    expected = convert_state(grads, enc, dec, out, cfg)
    ours = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert set(ours) == set(expected) - {"final_logits_bias"} and len(ours) > 20
    for name, grad in ours.items():  # per tensor, relative to its size: float32 sums in another order
        if "k_proj.bias" in name:  # softmax ignores a shift of every key: zero but for rounding, on both sides
            assert grad.norm() < 1e-4 and expected[name].norm() < 1e-4, name
            continue
        err = float((grad - expected[name]).norm() / expected[name].norm())
        assert err < 2e-4, (name, err)
