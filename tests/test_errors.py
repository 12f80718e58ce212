"""Bad input: user mistakes are one-line errors with exit status 1, damaged files are detected,
and odd text (empty, unknown characters, too long) never crashes translation."""

from __future__ import annotations

import json
import os
import select
import shutil
import stat
import subprocess
import warnings
from dataclasses import asdict

import pytest
import torch
from conftest import call_main, reversal_pairs, run_seqformer, seqformer_command, tiny_model, write_tsv

import seqformer
from seqformer import TrainConfig
from seqformer.config import DecodeConfig
from seqformer.data.corpus import read_parallel
from seqformer.errors import ConfigError, DataError
from seqformer.segment import split_sentences
from seqformer.training import checkpoint as ckpt
from seqformer.translator import Translator


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("seqformer: error: ")
    return lines[0]


def test_blank_tsv_lines_are_skipped_like_empty_line_aligned_pairs(tmp_path):
    tsv = tmp_path / "gaps.tsv"
    tsv.write_text("a b\tb a\n\n   \nc d\td c\n")
    assert read_parallel(str(tsv)) == [("a b", "b a"), ("c d", "d c")]  # was: gaps.tsv:2: expected 'source<TAB>target'


def test_malformed_tsv_line_is_reported_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a b\tb a\nc d\td c\nthis line has no tab\ne f\tf e\n")
    result = run_seqformer("train", "--train", str(bad), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 1
    assert f"{bad}:3:" in _one_line_error(result.stderr)


def test_a_tab_inside_a_sentence_is_reported_not_cut(tmp_path):
    # "Hi\tSa\tlut" was read as ("Hi", "Sa"): "lut" lost without a word
    tsv = tmp_path / "stray.tsv"
    tsv.write_text("Hello\tBonjour\nHi\tSa\tlut\n")
    with pytest.raises(DataError, match=rf"{tsv}:2: 3 tab-separated columns, the first line has 2"):
        read_parallel(str(tsv))
    tsv.write_text("Hello\tBonjour\tCC-BY #1\nHi\tSalut\tCC-BY #2\nYes\tOui\t\n")  # attribution: ignored
    assert read_parallel(str(tsv)) == [("Hello", "Bonjour"), ("Hi", "Salut"), ("Yes", "Oui")]
    tsv.write_text("Hello\tBonjour\nHi\tSalut\t\n")  # an empty extra column loses nothing
    assert read_parallel(str(tsv)) == [("Hello", "Bonjour"), ("Hi", "Salut")]
    tsv.write_text("Hello\tBonjour\t\nI see\tJe\tvois\n")  # was: the first line's empty column let "vois" go
    with pytest.raises(DataError, match=rf"{tsv}:2: 3 tab-separated columns, the first line has 2 with text"):
        read_parallel(str(tsv))


def test_misaligned_prefix_pair_is_an_error(tmp_path, capsys):
    (tmp_path / "corpus.en").write_text("a\nb\nc\n")
    (tmp_path / "corpus.fr").write_text("a\nb\n")
    assert call_main("train", "--train", tmp_path / "corpus", "--out", tmp_path / "out", "--quiet") == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "corpus.en has 3 lines" in line and "corpus.fr has 2" in line


def test_misaligned_references_are_an_error(model_dir, tmp_path, capsys):
    (tmp_path / "src.txt").write_text("a b\nc d\n")
    (tmp_path / "ref.txt").write_text("b a\n")
    rc = call_main("evaluate", "--model", model_dir, "--src", tmp_path / "src.txt", "--ref", tmp_path / "ref.txt")
    assert rc == 1
    assert "ref.txt has 1 lines but" in _one_line_error(capsys.readouterr().err)


def test_prefix_pair_and_gzip_are_read(tmp_path):
    import gzip

    (tmp_path / "c.en").write_text("a b\nc\n")
    with gzip.open(tmp_path / "c.fr.gz", "wt") as f:
        f.write("b a\nc\n")
    assert read_parallel(str(tmp_path / "c"), "en", "fr") == [("a b", "b a"), ("c", "c")]
    with pytest.raises(DataError, match="neither"):
        read_parallel(str(tmp_path / "c"), "en", "de")


def test_corrupt_compressed_data_is_a_data_error(tmp_path):
    """A damaged deflate block raises zlib.error (not OSError): it too must be one line naming the file."""
    import gzip

    data = bytearray(gzip.compress(b"a b\tb a\n" * 50))
    data[10] = 0x07  # the first byte of the deflate stream: an invalid block type
    (tmp_path / "z.tsv.gz").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"z.tsv.gz: cannot read \(.*invalid block type"):
        read_parallel(str(tmp_path / "z.tsv.gz"))


def test_a_vocabulary_too_small_for_the_corpus_is_a_data_error(tmp_path):
    from seqformer.data.tokenizer import train_sentencepiece

    sentences = ["".join(chr(0x61 + (i * 7 + j) % 26) for j in range(12)) + " 0123456789" for i in range(200)]
    with pytest.raises(DataError, match="cannot train a 16-piece SentencePiece model.*raise --vocab-size"):
        train_sentencepiece(sentences, tmp_path / "spm.model", 16)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_byte_order_mark_and_crlf_are_not_part_of_the_text(tmp_path):
    (tmp_path / "bom.tsv").write_bytes("\ufeffa b\tb a\r\nc\td\r\n".encode())
    assert read_parallel(str(tmp_path / "bom.tsv")) == [("a b", "b a"), ("c", "d")]


def test_invalid_utf8_is_a_data_error_naming_the_line(tmp_path):
    (tmp_path / "bad.tsv").write_bytes(b"a\tb\nc \xff\xfe\tc\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: not valid UTF-8 \(invalid start byte at byte 3 of the line\)"):
        read_parallel(str(tmp_path / "bad.tsv"))


def test_invalid_utf8_on_stdin_is_a_one_line_error(model_dir):
    result = subprocess.run([*seqformer_command(), "translate", "--model", str(model_dir)], capture_output=True,
                            input=b"a b\n\xff\xfe c\n", env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert result.returncode == 1
    assert "<stdin>:2: not valid UTF-8" in _one_line_error(result.stderr.decode())


def test_a_piped_line_is_translated_while_the_pipe_stays_open(model_dir):
    # A client that writes one line and waits for its answer (a coprocess) got nothing until 32 lines or EOF.
    want = Translator.load(model_dir).translate(["a b", "c d"])
    proc = subprocess.Popen([*seqformer_command(), "translate", "--model", str(model_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        proc.stdin.write(b"a b\n")
        proc.stdin.flush()
        assert select.select([proc.stdout], [], [], 240)[0], "no translation while the pipe stayed open"
        first = proc.stdout.readline().decode()
        proc.stdin.write(b"c d\n")
        proc.stdin.close()
        rest = proc.stdout.read().decode()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert [first.rstrip("\n"), *rest.splitlines()] == want


def test_a_reader_that_leaves_ends_translation_quietly(model_dir):
    # `seqformer translate ... | head -1`: status 0 and nothing on stderr (not status 1 from the OSError handler, nor
    # Python's "Exception ignored ... BrokenPipeError" from a failed flush at exit). PYTHONUNBUFFERED (set where these
    # tests were written) hid the second: a buffered stdout keeps what a flush could not write, and flushes it again.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([*seqformer_command(), "translate", "--model", str(model_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(env, OMP_NUM_THREADS="1"))
    try:
        proc.stdin.write(b"a b\n")
        proc.stdin.flush()
        assert proc.stdout.readline()
        proc.stdout.close()  # the reader leaves; the next translation has nowhere to go
        proc.stdin.write(b"c d\n" * 50)
        proc.stdin.close()
        assert proc.wait(timeout=240) == 0
        assert proc.stderr.read().decode() == ""
    finally:
        proc.kill()


def test_piped_lines_that_arrived_together_are_batched_together():
    # The other side of translating a line as soon as nothing else waits: lines already in the pipe (a file
    # piped in) are batched, not translated one by one (a buffered reader hid them from select()).
    from seqformer.commands import _arriving_lines

    read, write = os.pipe()
    os.write(write, b"a\nb\nc\npart")
    lines = _arriving_lines(read)
    assert [next(lines) for _ in range(3)] == [(b"a\n", True), (b"b\n", True), (b"c\n", True)]  # "part" waits
    os.write(write, b"ial\n")
    assert next(lines) == (b"partial\n", False)  # nothing more in the pipe: translate now
    os.write(write, b"no newline at the end")
    os.close(write)
    assert list(lines) == [(b"no newline at the end", False)]
    os.close(read)


def test_lines_waiting_on_stdin_are_chunked_as_a_files_are(monkeypatch):
    # Chunks of one batch gave --streams nothing to share out (and sorting by length little to sort): a file
    # piped in decoded on one stream whatever --streams said.
    import argparse

    from seqformer.commands import INPUT_CHUNK_BATCHES, _chunks

    read, write = os.pipe()
    os.write(write, b"".join(b"w%d\n" % i for i in range(100)))
    os.close(write)
    with open(read, closefd=True) as stdin:
        monkeypatch.setattr("sys.stdin", stdin)
        chunks = list(_chunks(argparse.Namespace(text=None, input=None), batch_size=8))
    assert 100 < 8 * INPUT_CHUNK_BATCHES and [len(c) for c in chunks] == [100]
    assert chunks[0] == [f"w{i}" for i in range(100)]


def test_an_input_file_is_translated_as_it_is_read(model_dir, tmp_path, capsys):
    # The whole file was read (and held) before the first line was translated: a bad line just after the first
    # chunk (16 batches of 1) now stops the run after that chunk's translations have been printed, not before any.
    from seqformer.commands import INPUT_CHUNK_BATCHES

    good = ["a b", "c d"] * (INPUT_CHUNK_BATCHES // 2)
    (tmp_path / "in.txt").write_bytes("".join(x + "\n" for x in good).encode() + b"\xff bad\n")
    rc = call_main("translate", "--model", model_dir, "--input", tmp_path / "in.txt", "--batch-size", "1")
    out, err = capsys.readouterr()
    assert rc == 1 and f"in.txt:{len(good) + 1}: not valid UTF-8" in err
    assert out.splitlines() == Translator.load(model_dir).translate(good)


def test_input_may_be_a_pipe(model_dir):
    result = subprocess.run([*seqformer_command(), "translate", "--model", str(model_dir), "--input", "/dev/stdin"],
                            capture_output=True, input=b"a b\n", env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert result.returncode == 0, result.stderr  # "file not found" before: only regular files were opened
    assert result.stdout.decode().splitlines() == Translator.load(model_dir).translate(["a b"])


def test_a_thread_count_pytorch_cannot_run_is_lowered(model_dir):
    result = run_seqformer("translate", "--model", str(model_dir), "--threads", "100000", "a b")
    assert result.returncode == 0, result.stderr  # PyTorch took 100000 and died with a segmentation fault
    assert f"--threads 100000 is more than 4 per CPU core: using {4 * (os.cpu_count() or 1)}" in result.stderr
    assert result.stdout.splitlines() == Translator.load(model_dir).translate(["a b"])


def test_a_beam_size_beside_sampling_is_refused_where_it_was_given(model_dir):
    translator = Translator.load(model_dir)
    with pytest.raises(ConfigError, match=r"a beam size \(8\) has no effect with sampling"):
        translator.translate(["a b"], sampling=True, beam_size=8)  # sampled as if it were not there
    with pytest.raises(ConfigError, match=r"a beam size \(2\)"):
        translator.translate(["a b"], sampling=True, beam_size=2)
    # a whole DecodeConfig passed on carries the default beam size without having asked for it: accepted
    sampled = translator.translate(["a b"], sampling=True, seed=1)
    assert translator.translate(["a b"], **asdict(DecodeConfig(sampling=True, seed=1))) == sampled
    assert translator.translate(["a b"], sampling=True, beam_size=1, seed=1) == sampled
    result = run_seqformer("translate", "--model", str(model_dir), "--sampling", "--seed", "1", "a b")
    assert result.returncode == 0, result.stderr  # the CLI's default beam size is not "given"


def test_the_clis_sampling_options_reach_the_search(model_dir):
    """--json --nbest 3 --sampling with a seed, a temperature and a top-k prints the library's samples for
    the same options (a dropped option would print other samples, or the beam's n-best)."""
    result = run_seqformer("translate", "--model", str(model_dir), "--json", "--sampling", "--nbest", "3",
                           "--seed", "5", "--temperature", "3", "--top-k", "6", "a b c")
    assert result.returncode == 0, result.stderr
    got = [h["text"] for h in json.loads(result.stdout)["translations"]]
    want = Translator.load(model_dir).translate_nbest(["a b c"], sampling=True, nbest=3, seed=5, temperature=3.0,
                                                      top_k=6)[0]
    assert got == [h.text for h in want]
    others = Translator.load(model_dir).translate_nbest(["a b c"], sampling=True, nbest=3, seed=5)[0]
    assert [h.text for h in others] != got  # the temperature and top-k change the samples: the check can fail


def test_an_unknown_quantization_is_refused(model_dir):
    with pytest.raises(ConfigError, match="quantize must be"):
        Translator.load(model_dir, quantize="int4")  # returned an fp32 model without a word


@pytest.mark.parametrize(("args", "message"), [
    (["translate", "--threads", "-1", "a"], "--threads must be >= 0"),
    (["translate", "--input", "{tmp}/empty.txt", "a"], "not both"),  # the file was silently ignored
    (["translate", "--nbest", "2", "--beam-size", "2", "a"], "--nbest 2 needs --json"),  # printed one
    (["translate", "--sampling", "--seed", str(2**70), "a"], "seed must be a 64-bit integer"),  # traceback
    (["translate", "--sampling", "--beam-size", "8", "a"], "a beam size (8) has no effect with sampling"),  # ignored
    (["translate", "--input", "{tmp}"], "is a folder, not a file"),
    (["translate", "caf\udce9"], "TEXT argument 1: not valid UTF-8"),  # argv bytes that are not UTF-8
    (["translate", "--attention", "a"], "give --json too"),
    (["translate", "--output", "{tmp}", "a"], "is a folder"),
    (["evaluate", "--src", "{tmp}/empty.txt", "--ref", "{tmp}/empty.txt"], "empty.txt: no lines to evaluate"),
])
def test_bad_command_line_values_are_one_line_errors(model_dir, tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("")
    assert call_main(*[a.format(tmp=tmp_path) for a in args], "--model", model_dir) == 1
    assert message in _one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]  # nothing written


@pytest.mark.parametrize("args, message", [
    (["translate", "--beam-size", "x", "a"], "argument --beam-size: invalid int value: 'x' (see seqformer translate --help)"),
    (["translate", "--bogus", "a"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_flag_mistakes_are_one_line_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        call_main(*args)
    assert exit_.value.code == 2
    line = _one_line_error(capsys.readouterr().err)  # was: a usage block of a dozen lines, then the error
    assert message in line and line.endswith("--help)")


@pytest.mark.parametrize("section", ["model", "tokenizer"])
def test_a_config_section_that_is_not_an_object_is_a_model_dir_error(model_dir, tmp_path, capsys, section):
    broken = _broken_copy(model_dir, tmp_path, lambda d: None)
    config = json.loads((broken / "config.json").read_text())
    config[section] = None if section == "model" else "spm.model"
    (broken / "config.json").write_text(json.dumps(config))
    assert call_main("translate", "--model", broken, "a") == 1
    assert f"config.json: section '{section}' must be a JSON object" in _one_line_error(capsys.readouterr().err)


def test_a_recipe_section_that_is_not_an_object_is_a_config_error(tmp_path, capsys):
    (tmp_path / "recipe.json").write_text(json.dumps({"train": None, "model": {}}))
    assert call_main("train", "--config", tmp_path / "recipe.json") == 1
    assert "section 'train' must be a JSON object" in _one_line_error(capsys.readouterr().err)


def _broken_copy(model_dir, tmp_path, breaker):
    target = tmp_path / "broken"
    shutil.copytree(model_dir, target)
    breaker(target)
    return target


BREAKERS = {
    "missing dir": (lambda d: shutil.rmtree(d), "model directory not found"),
    "missing config": (lambda d: (d / "config.json").unlink(), "config.json: file not found"),
    "invalid config": (lambda d: (d / "config.json").write_text("{ not json"), "invalid JSON"),
    "missing weights": (lambda d: (d / "model.safetensors").unlink(), "weights file not found"),
    "garbage weights": (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 100), "corrupt or truncated"),
    "truncated weights": (lambda d: _truncate(d / "model.safetensors"), "corrupt or truncated"),
    "corrupt tokenizer": (lambda d: (d / "spm.model").write_bytes(b"not a model"), "not a valid SentencePiece"),
    "missing tokenizer": (lambda d: (d / "spm.model").unlink(), "SentencePiece model not found"),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", list(BREAKERS))
def test_damaged_model_directory_is_a_one_line_error(model_dir, tmp_path, capsys, case):
    breaker, message = BREAKERS[case]
    broken = _broken_copy(model_dir, tmp_path, breaker)
    assert call_main("translate", "--model", broken, "a b c") == 1
    captured = capsys.readouterr()
    assert message in _one_line_error(captured.err)
    assert captured.out == ""


def test_damaged_model_directory_in_a_real_process(model_dir, tmp_path):
    broken = _broken_copy(model_dir, tmp_path, BREAKERS["garbage weights"][0])
    result = run_seqformer("translate", "--model", str(broken), "a b c")
    assert result.returncode == 1
    assert "corrupt or truncated" in _one_line_error(result.stderr)


def _three_checkpoints(directory):
    model = tiny_model(seed=30)
    opt = torch.optim.Adam(model.parameters())
    for step in (1, 2, 3):
        with torch.no_grad():
            model.encoder.layers[0].ffn.fc1.bias.fill_(step)
        ckpt.save_checkpoint(directory, model, opt, ckpt.TrainState(step=step))
    return ckpt.list_checkpoints(directory)


def _flip_byte_in_tensor_data(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # the end of the file is tensor data: still parses, checksum must catch it
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_byte_in_tensor_data, lambda p: p.write_bytes(b"")],
                         ids=["truncated", "bit-flip", "empty"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    paths = _three_checkpoints(tmp_path)
    damage(paths[-1])
    with pytest.warns(UserWarning, match="ckpt-00000003.*falling back"):
        path, tensors, meta = ckpt.load_latest(tmp_path)
    assert path == paths[1]
    assert json.loads(meta["state"])["step"] == 2
    assert tensors["model.encoder.layers.0.ffn.fc1.bias"].eq(2).all()


def test_no_good_checkpoint_gives_none(tmp_path):
    assert ckpt.load_latest(tmp_path) is None
    for path in _three_checkpoints(tmp_path):
        _truncate(path)
    with pytest.warns(UserWarning):
        assert ckpt.load_latest(tmp_path) is None


def test_resume_skips_a_damaged_checkpoint_and_still_reproduces_the_run(tmp_path, spm_file):
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(30, seed=7))

    def config(name, steps):
        return TrainConfig(train=str(train), out=str(tmp_path / name), tokenizer=str(spm_file), preset="tiny",
                           max_tokens=64, lr=2e-3, warmup_steps=2, max_steps=steps, precision="fp32",
                           log_every=1, save_every=2, keep_last=5, seed=7)

    model = dict(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32, dropout=0.2)
    full = seqformer.train(config("full", 6), model, progress=False)
    part = seqformer.train(config("part", 4), model, progress=False)
    _flip_byte_in_tensor_data(part / "checkpoints" / "ckpt-00000004.safetensors")
    with pytest.warns(UserWarning, match="falling back"):
        seqformer.train(config("part", 6), model, resume=True, progress=False)

    def losses(out):
        return [(r["step"], r["loss"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]

    assert losses(part) == losses(full)  # steps 3-4 were redone from ckpt 2 and the log truncated to match


def test_existing_checkpoints_need_resume(tmp_path, spm_file, capsys):
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(10, seed=8))
    args = ["train", "--train", train, "--out", tmp_path / "out", "--tokenizer", spm_file, "--preset", "tiny",
            "--d-model", "16", "--n-heads", "2", "--max-steps", "1", "--quiet", "--precision", "fp32"]
    assert call_main(*args) == 0
    capsys.readouterr()
    assert call_main(*args) == 1
    assert "--resume" in _one_line_error(capsys.readouterr().err)


def _tiny_train_args(tmp_path, spm_file, out, *extra):
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(10, seed=8))
    return ["train", "--train", train, "--out", out, "--tokenizer", spm_file, "--preset", "tiny", "--d-model", "16",
            "--n-heads", "2", "--max-steps", "1", "--quiet", "--precision", "fp32", *extra]


def test_resume_refuses_a_model_flag_it_would_ignore(tmp_path, spm_file, capsys):
    out = tmp_path / "out"
    assert call_main(*_tiny_train_args(tmp_path, spm_file, out)) == 0
    capsys.readouterr()
    more = [a if a != "1" else "2" for a in _tiny_train_args(tmp_path, spm_file, out, "--resume")]  # --max-steps 2
    assert call_main(*more, "--dropout", "0.3") == 1  # was: trained on with the run's own dropout, flag dropped
    assert "dropout=0.1" in _one_line_error(capsys.readouterr().err)
    assert call_main(*more) == 0  # the same flags as the run: continues


def test_training_into_a_model_directory_is_refused_before_it_is_damaged(model_dir, tmp_path, spm_file, capsys):
    out = tmp_path / "imported"
    shutil.copytree(model_dir, out)
    config = (out / "config.json").read_bytes()
    assert call_main(*_tiny_train_args(tmp_path, spm_file, out)) == 1
    assert "--init-from" in _one_line_error(capsys.readouterr().err)
    assert (out / "config.json").read_bytes() == config  # was: overwritten beside the old weights
    Translator.load(out)

    # A run killed after writing its model (at a validation) but before its first checkpoint is still a run.
    run = tmp_path / "run"
    assert call_main(*_tiny_train_args(tmp_path, spm_file, run)) == 0
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    assert call_main(*_tiny_train_args(tmp_path, spm_file, run, "--resume")) == 0


def test_a_tokenizer_left_by_another_recipe_is_not_reused(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(data_dir / "spm.model", out / "spm.model")  # an earlier start with another vocabulary size
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(10, seed=8))
    assert call_main("train", "--train", train, "--out", out, "--vocab-size", "16", "--max-steps", "1",
                     "--quiet") == 1
    assert "delete it" in _one_line_error(capsys.readouterr().err)


def test_a_tokenizer_with_other_special_ids_is_refused(tmp_path, capsys):
    # spm_train's defaults (unk 0, <s> 1, </s> 2, no pad): trained on, piece 3 would end every sentence
    import sentencepiece as spm

    theirs = tmp_path / "theirs.model"
    spm.SentencePieceTrainer.train(sentence_iterator=iter([" ".join(s) for s, _ in reversal_pairs(200, seed=3)]),
                                   model_prefix=str(theirs.with_suffix("")), vocab_size=20, hard_vocab_limit=False,
                                   minloglevel=2)
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(10, seed=8))
    out = tmp_path / "out"
    assert call_main("train", "--train", train, "--out", out, "--tokenizer", theirs, "--max-steps", "1",
                     "--quiet") == 1
    error = _one_line_error(capsys.readouterr().err)
    assert str(theirs) in error and "pad none, unk 0, <s> 1, </s> 2" in error
    assert not (out / "theirs.model").exists()  # refused before anything was copied


def test_a_new_model_refuses_special_ids_its_tokenizer_does_not_have(tmp_path, spm_file, capsys):
    assert call_main(*_tiny_train_args(tmp_path, spm_file, tmp_path / "out", "--eos-id", "5")) == 1
    assert "eos_id=5" in _one_line_error(capsys.readouterr().err)  # was: trained with piece 5 as </s>
    assert call_main(*_tiny_train_args(tmp_path, spm_file, tmp_path / "ok", "--eos-id", "3")) == 0  # the same id


def test_a_new_model_takes_its_vocabulary_sizes_from_its_tokenizer(tmp_path, spm_file, capsys):
    # a recipe's model section with config.json's sizes of another model: embeddings too small (an IndexError
    # traceback at the first batch) or rows no piece uses
    import sentencepiece as spm

    n = spm.SentencePieceProcessor(model_file=str(spm_file)).get_piece_size()
    for size, out, status in ((n - 4, "out", 1), (n, "ok", 0)):  # the same sizes (a copied config.json) are fine
        recipe = tmp_path / f"{out}.json"
        recipe.write_text(json.dumps({"model": {"src_vocab_size": size, "tgt_vocab_size": size}}))
        assert call_main(*_tiny_train_args(tmp_path, spm_file, tmp_path / out, "--config", recipe)) == status
        if status:
            assert f"src_vocab_size={n - 4}: a new model's vocabulary sizes are its tokenizer's piece counts (here " \
                   f"src {n}, tgt {n})" in _one_line_error(capsys.readouterr().err)


def test_tokenizer_options_beside_a_given_tokenizer_are_said_to_be_ignored(tmp_path, spm_file, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="seqformer"):
        assert call_main(*_tiny_train_args(tmp_path, spm_file, tmp_path / "out", "--vocab-size", "16000",
                                           "--spm-model-type", "bpe")) == 0
    assert f"vocab_size=16000, spm_model_type='bpe' ignored: the tokenizer comes from --tokenizer {spm_file}" \
        in caplog.text  # were ignored without a word


def _leave_only_the_tokenizer(out):
    """What a run killed before its first checkpoint leaves: its tokenizer (and what it was trained on)."""
    for path in [*(out / "checkpoints").iterdir(), out / "model.safetensors", out / "config.json"]:
        path.unlink()


def test_a_restart_keeps_only_a_tokenizer_trained_for_its_recipe(tmp_path, capsys):
    # A run stopped before its first checkpoint leaves its tokenizer; a new recipe with a larger vocabulary (or
    # another corpus) in the same --out trained on the old one, saying only "keeping" in an info line.
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(30, seed=8))
    other = write_tsv(tmp_path / "other.tsv", reversal_pairs(30, seed=9))
    out = tmp_path / "out"
    args = ["--out", out, "--max-steps", "1", "--quiet", "--preset", "tiny"]
    assert call_main("train", "--train", train, *args, "--vocab-size", "16") == 0
    capsys.readouterr()
    _leave_only_the_tokenizer(out)
    first = (out / "spm.model").read_bytes()
    assert call_main("train", "--train", train, *args, "--vocab-size", "20") == 1
    assert "vocab_size=16" in _one_line_error(capsys.readouterr().err)
    assert call_main("train", "--train", other, *args, "--vocab-size", "16") == 1
    assert "other text" in _one_line_error(capsys.readouterr().err)
    # the same text and settings: a restart, which keeps it (the seed only picks the sample of a larger corpus)
    assert call_main("train", "--train", train, *args, "--vocab-size", "16", "--seed", "2") == 0
    assert (out / "spm.model").read_bytes() == first


def test_a_restart_does_not_take_a_copied_tokenizer_for_its_own(tmp_path, spm_file, capsys):
    out = tmp_path / "out"
    assert call_main(*_tiny_train_args(tmp_path, spm_file, out)) == 0  # copies spm_file in as spm.model
    capsys.readouterr()
    _leave_only_the_tokenizer(out)
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(10, seed=8))
    assert call_main("train", "--train", train, "--out", out, "--vocab-size", "40", "--max-steps", "1",
                     "--quiet") == 1
    assert f"copied from {spm_file}" in _one_line_error(capsys.readouterr().err)


def test_bad_model_flags_fail_before_any_data_is_read(tmp_path, capsys):
    missing = tmp_path / "nowhere.tsv"  # never read: the flag is checked first
    for flag, message in ((["--n-heads", "0"], "n_heads must be >= 1"), (["--activation", "tanh"], "activation")):
        assert call_main("train", "--train", missing, "--out", tmp_path / "out", *flag, "--quiet") == 1
        assert message in _one_line_error(capsys.readouterr().err)


def test_a_config_field_of_the_wrong_kind_names_the_file(tmp_path, spm_file, capsys):
    bad = tmp_path / "bad"
    assert call_main(*_tiny_train_args(tmp_path, spm_file, bad)) == 0  # a run: a model and its checkpoint
    capsys.readouterr()
    config = json.loads((bad / "config.json").read_text())
    config["model"]["n_heads"] = 0
    (bad / "config.json").write_text(json.dumps(config))
    for args in (["translate", "x", "--model", bad], ["average", bad, "--last", "1"]):
        assert call_main(*args) == 1  # was: ZeroDivisionError (translate), KeyError or no file named (average)
        assert f"{bad / 'config.json'}: n_heads must be >= 1" in _one_line_error(capsys.readouterr().err)


def test_outputs_go_into_pipes_and_through_links_keeping_permissions(tmp_path):
    from seqformer.io import write_output

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_output(fifo, b"une ligne\n")
        assert os.read(reader, 100) == b"une ligne\n"  # was: the pipe replaced by a regular file
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    target, link = tmp_path / "private.txt", tmp_path / "link.txt"
    target.write_text("old\n")
    target.chmod(0o600)
    link.symlink_to(target)
    write_output(link, b"new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # was: 0644, readable by everyone


# --- odd text ----------------------------------------------------------------------------------

def test_empty_input_gives_empty_output(model_dir):
    translator = Translator.load(model_dir)
    with pytest.raises(TypeError, match="list of strings"):  # was: one translation per character
        translator.translate("a b")
    out = translator.translate(["", "a b", "   ", ""])
    assert out[0] == out[2] == out[3] == ""
    assert translator.translate_nbest([""]) == [[]]
    assert translator.translate([]) == []


def test_input_the_tokenizer_reduces_to_nothing_gives_empty_output(model_dir):
    translator = Translator.load(model_dir)
    invisible = ["\u200b", "\u200e \u200b", "\ufeff"]  # zero-width space, left-to-right mark, BOM
    assert translator.tokenizer.encode_src(invisible) == [[], [], []]  # the premise: no subwords at all
    out = translator.translate(invisible + ["a b"], beam_size=2)
    assert out[:3] == ["", "", ""] and out[3]  # was: a sentence invented from a bare </s>
    assert translator.translate(t for t in ["a b", ""]) == translator.translate(["a b", ""])  # was: IndexError


def test_a_sentence_translated_as_nothing_adds_no_space_when_joined():
    from seqformer.segment import join_pieces
    from seqformer.translator import Translation

    def one(text: str) -> list[Translation]:
        return [Translation(text, -1.0, -1.0, text.split())]

    joined = join_pieces([one(""), one("Bonjour."), one(""), one("Merci."), one("")])
    assert joined[0].text == "Bonjour. Merci."  # was: " Bonjour.  Merci. "
    # Chinese and Japanese sentences follow each other without a space (one was put after every 。)
    assert join_pieces([one("我很好。"), one("你呢？"), one("「好。」"), one("OK.")])[0].text == "我很好。你呢？「好。」OK."
    assert join_pieces([one("東京は大きい．"), one("OK.")])[0].text == "東京は大きい．OK."


@pytest.mark.filterwarnings("ignore:.*outside the model's vocabulary")
def test_odd_characters_are_copied_dropped_or_translated_as_alone(model_dir):
    translator = Translator.load(model_dir)
    texts = ["日本語 ☃ a b", "Ω", "\u200b", "a\u0000b", "🙂" * 5]
    for options in (dict(beam_size=1), dict(beam_size=3)):
        out = translator.translate(texts, **options)
        assert out == [translator.translate([t], **options)[0] for t in texts]  # no text disturbs its batch
        assert "☃" in out[0]  # a symbol is held out of the model and put back
        assert out[2] == ""  # nothing the model can read: nothing invented
        assert out[4] == "🙂" * 5  # only symbols: they are the translation


def test_letters_the_vocabulary_cannot_spell_are_named_in_one_warning(model_dir):
    translator = Translator.load(model_dir)
    with pytest.warns(UserWarning, match=r"^3 character\(s\) outside the model's vocabulary .*: 日本語$") as record:
        translator.translate(["日本語 ☃ a b", "本 c d"])  # the snowman is a symbol: held out and copied, not lost
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        translator.translate(["a b c", "d e ☃"])


@pytest.mark.parametrize("text,expected", [
    ("Hello there. How are you? I'm fine!", ["Hello there.", "How are you?", "I'm fine!"]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("Numbers like 3.14 stay. 42 starts a sentence.", ["Numbers like 3.14 stay.", "42 starts a sentence."]),
    ("e.g. this is one sentence. and so is this", ["e.g. this is one sentence.", "and so is this"]),
    ("i am tired. we should go home. it is late.", ["i am tired.", "we should go home.", "it is late."]),
    ("Mr. Brown met Dr. Smith. J. R. R. Tolkien wrote it.", ["Mr. Brown met Dr. Smith.", "J. R. R. Tolkien wrote it."]),
    ("The U.S. Army. i.e. the army.", ["The U.S. Army.", "i.e. the army."]),
    ("Это кот. Это собака.", ["Это кот.", "Это собака."]),
    ("我很好。你呢？好！", ["我很好。", "你呢？", "好！"]),
    ("Wait... what? Wait... What?", ["Wait... what?", "Wait...", "What?"]),
    ('"Why?" she asked. "Go!" He went.', ['"Why?" she asked.', '"Go!"', "He went."]),
    ("  spaced\n  out.   Next  one  ", ["spaced out.", "Next one"]),
    ("他说（你好。）然后走了。", ["他说（你好。）", "然后走了。"]),  # full-width closers stay with their sentence
    ("你好！》第二句。", ["你好！》", "第二句。"]),
    ("東京は大きい．大阪も．", ["東京は大きい．", "大阪も．"]),  # a full-width period ends a sentence too
    ("値は３．５です。次。", ["値は３．５です。", "次。"]),  # but not between digits
    ("１．はじめに ２．方法", ["１．はじめに ２．方法"]),  # nor after one (a list marker, "Ｎｏ．５")
    ("えっ．．．本当？！次。", ["えっ．．．", "本当？！", "次。"]),  # a run of stops ends one sentence
    ("She said ‘Stop.’ Then she left.", ["She said ‘Stop.’", "Then she left."]),
    ("1. Buy milk. 2. Call Sam.", ["1. Buy milk.", "2. Call Sam."]),  # was: "1." and "Buy milk." apart
    ("1. First item 2. Second", ["1. First item 2. Second"]),  # was: "1.", "First item 2.", "Second"
    ("It was 1990. Then it rained.", ["It was 1990.", "Then it rained."]),  # a year still ends a sentence
    # were split after the abbreviation (or, the ages, not split):
    ("Gen. Patton arrived.", ["Gen. Patton arrived."]),
    ("See p. 12 for details. Room No. 5 is free.", ["See p. 12 for details.", "Room No. 5 is free."]),
    ("Vaswani et al. (2017) proposed it.", ["Vaswani et al. (2017) proposed it."]),
    ("apples, pears, etc. and more", ["apples, pears, etc. and more"]),
    ("She has a Ph.D. in physics.", ["She has a Ph.D. in physics."]),
    ("I am 25. She is 30.", ["I am 25.", "She is 30."]),
    ("I said no. We sold pears, etc. Then we left.", ["I said no.", "We sold pears, etc.", "Then we left."]),
    ("", [""]),
    ("   ", [""]),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_long_input_is_split_into_sentences(model_dir):
    translator = Translator.load(model_dir)
    sentences = ["a b c d e f g h i j a b.", "C d e f g h i j a b c d.", "E f g h i j a b c d e f."]
    joined = " ".join(sentences)
    assert translator.tokenizer.encode_src([joined])[0].__len__() + 1 > translator.model.cfg.max_positions
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*truncated")  # split sentences fit: no truncation warning
        (whole,) = translator.translate_nbest([joined], beam_size=2)
    parts = translator.translate_nbest(sentences, beam_size=2)
    assert len(whole) == 1
    assert whole[0].text == " ".join(p[0].text for p in parts)
    assert whole[0].score == pytest.approx(sum(p[0].score for p in parts))


@pytest.mark.filterwarnings("ignore:.*outside the model's vocabulary")
def test_nbest_or_attention_on_a_split_text_warns_that_it_is_joined(model_dir):
    translator = Translator.load(model_dir)
    two = "a b c. D e f."
    with pytest.warns(UserWarning, match="1 text.* of several sentences get one joined translation"):
        joined, _ = translator.translate_nbest([two, "a b c."], beam_size=3, nbest=3)  # was: silent
    assert len(joined) == 1
    with pytest.warns(UserWarning, match="joined"):
        translator.translate_nbest([two], beam_size=2, need_attention=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*outside the model's vocabulary")  # the tiny model has no "."
        assert len(translator.translate_nbest([two], beam_size=3, nbest=3, split=False)[0]) == 3
        translator.translate_nbest([two], beam_size=3)  # one best anyway: nothing lost


def test_a_lone_surrogate_in_the_api_is_a_data_error(model_dir):
    translator = Translator.load(model_dir)
    with pytest.raises(DataError, match="text 2: not valid Unicode .* character 4"):
        translator.translate(["a b", "caf\ud800"])  # was: a raw error from inside SentencePiece


def test_long_input_without_splitting_is_truncated_with_a_warning(model_dir):
    translator = Translator.load(model_dir)
    limit = translator.model.cfg.max_positions  # 24: 23 subwords and </s>
    symbols = ("a b c d e f g h i j " * 4).split()
    fed = []
    encode = translator.model.encode

    def recording_encode(src, mask):
        fed.append(src[~mask].tolist())  # the real (non-padding) source ids
        return encode(src, mask)

    translator.model.encode = recording_encode
    with pytest.warns(UserWarning, match="truncated"):
        long = translator.translate([" ".join(symbols)], split=False)
    assert long == translator.translate([" ".join(symbols[: limit - 1])], split=False)
    want = translator.tokenizer.encode_src([" ".join(symbols[: limit - 1])])[0] + [translator.model.cfg.eos_id]
    assert fed[0] == want and len(want) == limit  # the first 23 subwords and </s>: the model saw the cut input


def test_long_input_on_the_command_line_warns_on_one_line(model_dir):
    text = " ".join(("a b c d e f g h i j " * 4).split())
    result = run_seqformer("translate", "--model", str(model_dir), "--no-split", text)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("seqformer: warning: ") and "truncated" in err[0], result.stderr



# --- input files that read as something else ------------------------------------------------------

def test_utf16_and_old_mac_line_endings_are_errors_not_one_garbled_line(tmp_path):
    (tmp_path / "u16.en").write_bytes("hello\nworld\n".encode("utf-16-le"))  # valid UTF-8, a NUL per letter
    (tmp_path / "u16.fr").write_bytes("bonjour\nmonde\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=r"u16\.en:1: NUL byte at character 2 .*UTF-16"):  # was: junk pairs
        read_parallel(str(tmp_path / "u16"))
    (tmp_path / "mac.en").write_bytes(b"one\rtwo\rthree\r")
    (tmp_path / "mac.fr").write_bytes(b"un\rdeux\rtrois\r")
    with pytest.raises(DataError, match=r"mac\.en:1: carriage return inside the line at character 4"):
        read_parallel(str(tmp_path / "mac"))  # was: one pair ('one\rtwo\rthree', 'un\rdeux\rtrois')
    (tmp_path / "crlf.tsv").write_bytes(b"a b\tb a\r\nc d\td c\r\n")  # Windows line endings stay fine
    assert read_parallel(str(tmp_path / "crlf.tsv")) == [("a b", "b a"), ("c d", "d c")]


def test_pairs_with_an_empty_side_are_counted_in_a_warning(tmp_path, caplog):
    from seqformer.training.data import prepare

    data = write_tsv(tmp_path / "gaps.tsv", [("a b", "b a"), ("a", ""), ("", "d"), ("b c", "c b")])
    with caplog.at_level("WARNING"):
        prepared = prepare(TrainConfig(train=str(data), valid=str(data), vocab_size=16), tmp_path)
    assert len(prepared.train) == len(prepared.valid) == 2
    skipped = [r.getMessage() for r in caplog.records if "empty source or target" in r.getMessage()]
    assert skipped == [f"{data}: skipped 2 pair(s) with an empty source or target side"] * 2  # was: silent


def test_sentencepiece_trains_on_long_lines_and_names_the_real_problem(tmp_path):
    from seqformer.data.tokenizer import train_sentencepiece

    long_lines = [" ".join(f"w{i % 40}" for i in range(1500)) for _ in range(10)]  # > 4,192 bytes each
    train_sentencepiece(long_lines, tmp_path / "long.model", 50)  # was: skipped, then "raise --vocab-size"
    with pytest.raises(DataError, match="no usable text") as err:
        train_sentencepiece(["\x01\x02"] * 10, tmp_path / "ctl.model", 50)
    assert "vocab-size" not in str(err.value)


def test_closed_stdin_is_a_one_line_error(model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", None)  # what Python gives a process started with fd 0 closed
    assert call_main("translate", "--model", model_dir) == 1  # was: AttributeError traceback
    assert "stdin is closed" in _one_line_error(capsys.readouterr().err)


def test_closed_stdout_is_a_one_line_error(model_dir, tmp_path, monkeypatch, capsys):
    src = tmp_path / "src.txt"
    src.write_text("a b\n")
    monkeypatch.setattr("sys.stdout", None)  # what Python gives a process started with fd 1 closed
    assert call_main("translate", "--model", model_dir, "a b") == 1  # was: AttributeError traceback
    assert "stdout is closed: nowhere to write the translations" in _one_line_error(capsys.readouterr().err)
    assert call_main("evaluate", "--model", model_dir, "--src", src, "--ref", src) == 1  # was: exit 0, no scores
    assert "stdout is closed: nowhere to write the scores" in _one_line_error(capsys.readouterr().err)
    out = tmp_path / "out.txt"
    assert call_main("translate", "--model", model_dir, "a b", "--output", out) == 0  # a file needs no stdout
    assert out.read_text().count("\n") == 1


def test_the_processs_own_streams_are_recognised_by_any_spelling(tmp_path, monkeypatch):
    from seqformer.io import own_stream

    pid = os.getpid()
    for path, fd in (("/dev/stdout", 1), ("/dev/stderr", 2), ("/dev/stdin", 0), ("/dev/fd/1", 1),
                     ("/proc/self/fd/7", 7), (f"/proc/{pid}/fd/3", 3), ("/dev/../dev/stdout", 1)):
        assert own_stream(path) == fd, path
    for path in ("/dev/null", f"/proc/{pid + 1}/fd/1", tmp_path / "stdout", "/dev/fd/x"):
        assert own_stream(path) is None, path
    monkeypatch.chdir("/dev")
    assert own_stream("stdout") == 1


def test_an_output_descriptor_that_cannot_be_written_is_refused_before_translating(model_dir, capsys):
    closed = os.open(os.devnull, os.O_WRONLY)
    os.close(closed)
    assert call_main("translate", "--model", model_dir, "a b", "--output", f"/dev/fd/{closed}") == 1
    assert f"/dev/fd/{closed}: cannot be written (file descriptor {closed} is closed)" in _one_line_error(
        capsys.readouterr().err)
    assert call_main("translate", "--model", model_dir, "a b", "--output", "/dev/stdin") == 1
    assert "/dev/stdin: cannot be written (it is standard input)" in _one_line_error(capsys.readouterr().err)
    read_only = os.open(os.devnull, os.O_RDONLY)
    try:
        assert call_main("translate", "--model", model_dir, "a b", "--output", f"/dev/fd/{read_only}") == 1
        assert f"file descriptor {read_only} is open for reading only" in _one_line_error(capsys.readouterr().err)
    finally:
        os.close(read_only)


def test_output_to_dev_stdout_keeps_what_a_redirect_already_holds(model_dir, tmp_path):
    # stdout redirected to a file (`>> log.txt`): /dev/stdout resolves to that file, which was replaced
    # atomically (its earlier lines lost); evaluate's scores then went to the replaced, deleted file
    src, log = tmp_path / "src.txt", tmp_path / "log.txt"
    src.write_text("a b\nc d\n")
    log.write_text("earlier\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for args in (["translate", "--model", model_dir, "--input", src, "--output", "/dev/stdout"],
                 ["evaluate", "--model", model_dir, "--src", src, "--ref", src, "--hyp-out", "/dev/stdout"]):
        with open(log, "ab") as out:
            subprocess.run([*seqformer_command(), *map(str, args)], stdout=out, check=True, env=env, timeout=300)
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier" and len(lines) == 1 + 2 + 2 + 2  # translations, hypotheses, BLEU and chrF
    assert lines[-2].startswith("BLEU = ") and lines[-1].startswith("chrF = ")


def test_outputs_that_would_replace_an_input_or_loop_are_refused(model_dir, tmp_path, capsys):
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("a b\nc d\n")
    ref.write_text("b a\nd c\n")
    for args, flag, victim in (
        (("translate", "--model", model_dir, "--input", src, "--output", src), "--input", src),
        (("evaluate", "--model", model_dir, "--src", src, "--ref", ref, "--hyp-out", ref), "--ref", ref),
    ):
        before = victim.read_bytes()
        assert call_main(*args) == 1
        assert f"is also the {flag} file" in _one_line_error(capsys.readouterr().err)
        assert victim.read_bytes() == before  # was: replaced by the translations
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert call_main("translate", "--model", model_dir, "a b", "--output", loop) == 1  # was: RuntimeError traceback
    assert "cannot be written" in _one_line_error(capsys.readouterr().err)


def test_a_bad_tokenizer_file_is_named_as_given_and_not_copied(tmp_path, capsys):
    data = write_tsv(tmp_path / "d.tsv", reversal_pairs(20, seed=1))
    bad = tmp_path / "my.model"
    bad.write_bytes(b"not a sentencepiece model")
    out = tmp_path / "run"
    assert call_main("train", "--train", data, "--out", out, "--tokenizer", bad, "--preset", "tiny",
                     "--max-steps", "1", "--quiet") == 1
    assert f"{bad}: not a valid SentencePiece model" in _one_line_error(capsys.readouterr().err)  # was: run/my.model
    assert not (out / "my.model").exists()


def test_an_empty_path_is_an_error_not_an_absent_option(model_dir, tmp_path, capsys):
    # --init-from "" trained a new model from scratch
    src = tmp_path / "src.txt"
    src.write_text("a b\n")
    for args, flag in ((("translate", "--model", model_dir, "--input", ""), "--input"),  # was: read stdin
                       (("translate", "--model", model_dir, "a b", "--output", " "), "--output"),  # was: the screen
                       (("evaluate", "--model", model_dir, "--src", src, "--ref", src, "--hyp-out", ""), "--hyp-out"),
                       (("evaluate", "--model", model_dir, "--src", src, "--ref", ""), "--ref"),
                       (("train", "--train", src, "--out", tmp_path / "run", "--init-from", ""), "--init-from")):
        assert call_main(*args) == 1
        assert _one_line_error(capsys.readouterr().err) == f"seqformer: error: {flag} is empty: give a path"


def test_a_validation_set_that_cannot_validate_is_refused(tmp_path, spm_file, capsys):
    # each was accepted: the run trained without validation, kept its last weights and never stopped early
    blank = tmp_path / "blank.tsv"
    blank.write_text("\n  \n")
    assert call_main(*_tiny_train_args(tmp_path, spm_file, tmp_path / "a", "--valid", blank)) == 1
    assert f"{blank}: no non-empty sentence pairs to validate on" in _one_line_error(capsys.readouterr().err)
    long = write_tsv(tmp_path / "long.tsv", [(" ".join("abcdefghij" * 2), "a b")])  # 20 pieces + </s>
    assert call_main(*_tiny_train_args(tmp_path, spm_file, tmp_path / "b", "--valid", long, "--max-len", "12")) == 1
    assert f"{long}: no sentence pair is shorter than max_len=12" in _one_line_error(capsys.readouterr().err)
    assert call_main(*_tiny_train_args(tmp_path, spm_file, tmp_path / "c", "--patience", "2")) == 1
    assert "patience=2 stops training when validation stops improving: it needs --valid" in _one_line_error(
        capsys.readouterr().err)
    ok = write_tsv(tmp_path / "ok.tsv", reversal_pairs(3, seed=9))
    assert call_main(*_tiny_train_args(tmp_path, spm_file, tmp_path / "d", "--valid", ok, "--patience", "2")) == 0
    recipe = tmp_path / "recipe.json"  # --valid on the command line completes a recipe's patience
    recipe.write_text(json.dumps({"train": {"patience": 2}}))
    assert call_main(*_tiny_train_args(tmp_path, spm_file, tmp_path / "e", "--config", recipe, "--valid", ok)) == 0
