"""The command line end to end on generated data: train -> translate -> evaluate -> average."""

from __future__ import annotations

import json

import pytest
import sacrebleu
import torch
from conftest import call_main, reversal_pairs, run_seqformer, write_tsv
from safetensors.torch import load_file

from seqformer.training import checkpoint as ckpt
from seqformer.translator import Translator

SOURCES = ["a b c", "d e", "f g h i"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, spm_file):
    """A model trained by ``seqformer train`` for 40 updates (checkpoints at steps 20 and 40)."""
    base = tmp_path_factory.mktemp("cli")
    train = write_tsv(base / "train.tsv", reversal_pairs(60, seed=5))
    out = base / "run"
    rc = call_main("train", "--train", train, "--out", out, "--tokenizer", spm_file, "--preset", "tiny",
                   "--d-model", "32", "--n-heads", "2", "--n-encoder-layers", "1", "--n-decoder-layers", "1",
                   "--d-ff", "64", "--max-steps", "40", "--save-every", "20", "--log-every", "1", "--max-tokens", "128",
                   "--lr", "0.003", "--warmup-steps", "2", "--precision", "fp32", "--no-share-embeddings",
                   "--init", "xavier", "--quiet")  # xavier: after 40 updates it already emits words, not just </s>
    assert rc == 0
    return out


def test_train_writes_a_model_directory(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["model"]["n_encoder_layers"] == 1
    assert config["model"]["share_embeddings"] is False  # --no-share-embeddings reached ModelConfig
    assert config["model"]["init"] == "xavier"  # and --init
    assert json.loads((run_dir / "training.json").read_text())["step"] == 40
    assert [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")] == [
        "ckpt-00000020.safetensors", "ckpt-00000040.safetensors"]
    steps = [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))


def test_translate_arguments(run_dir, capsys):
    assert call_main("translate", "--model", run_dir, "--beam-size", "2", *SOURCES) == 0
    expected = Translator.load(run_dir).translate(SOURCES, beam_size=2)
    assert capsys.readouterr().out == "".join(t + "\n" for t in expected)
    assert any(expected)


def test_translate_input_and_output_files(run_dir, tmp_path, capsys):
    lines = ["a b c", "", "f g h i", "   "]
    (tmp_path / "in.txt").write_text("".join(x + "\n" for x in lines))
    rc = call_main("translate", "--model", run_dir, "--input", tmp_path / "in.txt", "--output", tmp_path / "out.txt")
    assert rc == 0 and capsys.readouterr().out == ""
    got = (tmp_path / "out.txt").read_text().split("\n")
    assert got == [*Translator.load(run_dir).translate(lines), ""]
    assert got[1] == "" and got[3] == ""  # empty input, empty output, line count kept


def test_translate_stdin_pipe(run_dir):
    """A real ``seqformer`` process reading a pipe."""
    result = run_seqformer("translate", "--model", str(run_dir), "--beam-size", "1", stdin="a b c\n\nd e\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == [*Translator.load(run_dir).translate(["a b c", "", "d e"], beam_size=1), ""]
    assert "Traceback" not in result.stderr


def test_translate_json_nbest(run_dir, capsys):
    assert call_main("translate", "--model", run_dir, "--json", "--beam-size", "3", "--nbest", "2", *SOURCES) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    best = Translator.load(run_dir).translate_nbest(SOURCES, beam_size=3, nbest=2)
    assert [r["input"] for r in records] == SOURCES
    for record, nbest in zip(records, best):
        hyps = record["translations"]
        assert len(hyps) == 2
        assert [h["text"] for h in hyps] == [t.text for t in nbest]
        assert hyps[0]["score"] >= hyps[1]["score"]
        assert "attention" not in hyps[0]
    # The numbers themselves: logprob is the model's teacher-forced log-probability of the tokens and </s>,
    # score that divided by their count (length penalty 1, the default)
    tr = Translator.load(run_dir)
    for source, record in zip(SOURCES, records):
        for hyp in record["translations"]:
            ids = [tr.tokenizer.tgt.piece_to_id(p) for p in hyp["tokens"]]
            assert hyp["logprob"] == pytest.approx(_teacher_forced_logprob(tr, source, ids), abs=1e-4)
            assert hyp["score"] == pytest.approx(hyp["logprob"] / (len(ids) + 1), abs=1e-6)


def _teacher_forced_logprob(tr: Translator, source: str, ids: list[int]) -> float:
    """log P(ids, </s> | source) from one forward pass of the whole target (no cache, no search)."""
    mc = tr.model.cfg
    src = torch.tensor([tr.tokenizer.encode_src([source])[0] + [mc.eos_id]])  # (1, S)
    tgt_in = torch.tensor([[mc.decoder_start_id, *ids]])  # (1, T)
    with torch.no_grad():
        lp = tr.model(src, src.eq(mc.pad_id), tgt_in).float().log_softmax(-1)[0]  # (T, V)
    return float(sum(lp[i, t] for i, t in enumerate([*ids, mc.eos_id])))


def test_translate_json_attention(run_dir, capsys):
    # texts of different lengths share a batch: each one's attention must still cover its own source
    # tokens only (no padding columns) and equal its attention when translated alone
    assert call_main("translate", "--model", run_dir, "--json", "--attention", *SOURCES) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tr = Translator.load(run_dir)
    for source, record in zip(SOURCES, records):
        hyp = record["translations"][0]
        assert len(hyp["attention"]) == len(hyp["tokens"]) + 1  # one row per output token and </s>
        assert hyp["src_tokens"] == [*tr.tokenizer.src_pieces(source), "</s>"]
        assert all(len(row) == len(hyp["src_tokens"]) for row in hyp["attention"])
        assert all(sum(row) == pytest.approx(1.0, abs=1e-4) for row in hyp["attention"])
        (alone,) = tr.translate_nbest([source], need_attention=True)[0][:1]
        assert torch.allclose(torch.tensor(hyp["attention"]), torch.tensor(alone.attention), atol=1e-5)


def test_evaluate_prints_bleu_and_chrf_with_signatures(run_dir, tmp_path, capsys):
    pairs = reversal_pairs(8, seed=6)
    (tmp_path / "src.txt").write_text("".join(s + "\n" for s, _ in pairs))
    (tmp_path / "ref.txt").write_text("".join(t + "\n" for _, t in pairs))
    rc = call_main("evaluate", "--model", run_dir, "--src", tmp_path / "src.txt", "--ref", tmp_path / "ref.txt",
                   "--hyp-out", tmp_path / "hyp.txt")
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    hyps = (tmp_path / "hyp.txt").read_text().splitlines()
    assert hyps == Translator.load(run_dir).translate([s for s, _ in pairs])
    refs = [[t for _, t in pairs]]
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    b, c = bleu.corpus_score(hyps, refs), chrf.corpus_score(hyps, refs)
    assert out[0] == f"BLEU = {b.score:.2f}  ({bleu.get_signature()})"
    assert out[1] == f"chrF = {c.score:.2f}  ({chrf.get_signature()})"
    assert "nrefs:1" in out[0] and "tok:13a" in out[0] and "nc:6" in out[1]

    rc = call_main("evaluate", "--model", run_dir, "--src", tmp_path / "src.txt", "--ref", tmp_path / "ref.txt",
                   "--ref", tmp_path / "src.txt", "--json")
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and "nrefs:2" in result["bleu_signature"]
    assert result["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs[0], [s for s, _ in pairs]]).score, 2)


def test_bleu_of_an_unspaced_target_counts_its_characters_not_its_clauses(run_dir, tmp_path, capsys):
    from seqformer.evaluation import bleu_tokenizer, score

    hyp, ref = ["我们今天去公园散步。"], [["我们今天去公园跑步。"]]
    assert score(hyp, ref)["bleu"] == 0.0  # 13a: each side one token, and they differ
    zh = score(hyp, ref, tgt_lang="zho_Hans")  # was 0 for every Chinese model: 13a whatever the language
    assert zh["bleu"] == round(sacrebleu.BLEU(tokenize="zh").corpus_score(hyp, ref).score, 2) > 30
    assert "tok:zh" in zh["bleu_signature"]
    assert [bleu_tokenizer(code) for code in ("zh", "ja-JP", "kor", "fr", "")] == ["zh", "char", "char", "13a", "13a"]
    (tmp_path / "src.txt").write_text("a b\n")
    rc = call_main("evaluate", "--model", run_dir, "--src", tmp_path / "src.txt", "--ref", tmp_path / "src.txt",
                   "--tokenize", "char", "--json")
    assert rc == 0 and "tok:char" in json.loads(capsys.readouterr().out)["bleu_signature"]


def test_average_into_another_training_run_is_refused(run_dir, tmp_path, capsys):
    other = tmp_path / "other-run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.json").write_text("the run's own\n")
    assert call_main("average", run_dir, "--last", "2", "--out", other) == 1
    assert "is a training run" in capsys.readouterr().err
    assert (other / "config.json").read_text() == "the run's own\n" and not (other / "model.safetensors").exists()


@pytest.mark.filterwarnings("ignore:.*outside the model's vocabulary")
def test_evaluate_can_translate_lines_whole(run_dir, tmp_path, capsys):
    src = ["a b c. d e f g h", "b c d e. f g h i j"]
    (tmp_path / "src.txt").write_text("".join(s + "\n" for s in src))
    rc = call_main("evaluate", "--model", run_dir, "--src", tmp_path / "src.txt", "--ref", tmp_path / "src.txt",
                   "--hyp-out", tmp_path / "hyp.txt", "--no-split")  # was: no such option
    assert rc == 0
    translator = Translator.load(run_dir)
    whole = translator.translate(src, split=False)
    assert whole != translator.translate(src)  # else an ignored --no-split would pass too
    assert (tmp_path / "hyp.txt").read_text().splitlines() == whole


def test_average_writes_the_mean_model(run_dir, tmp_path, capsys):
    assert call_main("average", run_dir, "--last", "2", "--out", tmp_path / "avg") == 0
    a, b = (ckpt.model_tensors(run_dir / "checkpoints" / f"ckpt-{s:08d}.safetensors") for s in (20, 40))
    saved = load_file(tmp_path / "avg" / "model.safetensors")
    assert saved.keys() == a.keys()
    for name, value in saved.items():
        torch.testing.assert_close(value, (a[name] + b[name]) / 2, atol=1e-7, rtol=0)
    assert not torch.equal(a["decoder.layers.0.ffn.fc1.weight"], b["decoder.layers.0.ffn.fc1.weight"])
    averaged = Translator.load(tmp_path / "avg")
    assert call_main("translate", "--model", tmp_path / "avg", *SOURCES) == 0
    assert capsys.readouterr().out.splitlines() == averaged.translate(SOURCES)


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        call_main("--version")
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("seqformer ")
    with pytest.raises(SystemExit) as exit_info:
        call_main("translate", "--no-such-flag")
    assert exit_info.value.code == 2
