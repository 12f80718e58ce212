"""Finishing a run: checkpoint averaging, early stopping with the best model kept, keep-last
pruning and the CSV / TensorBoard logs."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from dataclasses import replace

import pytest
import torch
from train_helpers import tiny_config

from seqformer import Translator
from seqformer.cli import main
from seqformer.errors import ConfigError
from seqformer.io import load_weights
from seqformer.training import checkpoint as ckpt
from seqformer.training import trainer as trainer_mod
from seqformer.training.average import average_checkpoints
from seqformer.training.runlog import COLUMNS, read_log
from seqformer.training.trainer import train


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_config(data_dir, out, max_steps=10, save_every=2, keep_last=4), progress=False)
    return out


def test_keep_last_prunes_old_checkpoints(run_dir):
    assert [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")] == [
        f"ckpt-{s:08d}.safetensors" for s in (4, 6, 8, 10)]


def test_average_cli_writes_the_tensor_mean(run_dir, tmp_path):
    assert main(["average", str(run_dir), "--last", "3", "--out", str(tmp_path / "avg")]) == 0
    paths = ckpt.list_checkpoints(run_dir / "checkpoints")[-3:]
    parts = [ckpt.model_tensors(p) for p in paths]
    averaged = load_weights(tmp_path / "avg" / "model.safetensors")
    assert set(averaged) == set(parts[0])
    for name, value in averaged.items():
        want = sum(p[name].double() for p in parts) / 3
        torch.testing.assert_close(value, want.float(), rtol=0, atol=1e-7)
    config = json.loads((tmp_path / "avg" / "config.json").read_text())
    assert config["averaged_from"] == [p.name for p in paths]
    assert len(Translator.load(tmp_path / "avg").translate(["red cat runs"], beam_size=2)) == 1


def test_averaging_in_place_keeps_the_best_model(run_dir, tmp_path):
    """The run's model is its best checkpoint's, which keep_last may have pruned: an in-place average
    keeps it as model.best.safetensors (it was overwritten, the only copy), and a re-average does not
    replace it with the first average."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    best = (run / "model.safetensors").read_bytes()
    assert main(["average", str(run), "--last", "3"]) == 0
    assert (run / "model.best.safetensors").read_bytes() == best
    assert (run / "model.safetensors").read_bytes() != best  # the average, as before
    assert main(["average", str(run), "--last", "2"]) == 0
    assert (run / "model.best.safetensors").read_bytes() == best


def test_averaging_in_place_is_refused_while_a_training_run_uses_the_directory(run_dir, tmp_path, capsys):
    # was: averaged, then the run's next best model replaced the average without a word
    import shutil

    from seqformer.training.rundir import held

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    model = (run / "model.safetensors").read_bytes()
    with held(run):  # as a training run holds it
        assert main(["average", str(run), "--last", "2"]) == 1
        assert "another seqformer process" in capsys.readouterr().err
        assert (run / "model.safetensors").read_bytes() == model
        assert main(["average", str(run), "--last", "2", "--out", str(tmp_path / "avg")]) == 0  # elsewhere: fine
    assert main(["average", str(run), "--last", "2"]) == 0  # once the run has ended
    assert (run / "model.safetensors").read_bytes() != model


def test_averaging_in_place_keeps_the_best_model_of_a_copied_run(run_dir, tmp_path):
    """A run copied without its file times (cp -r, scp -r): its model may be newer than training.json, as an
    average's would be; it is still the trainer's best model and is kept (was: overwritten, not kept)."""
    import os
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    info = (run / "training.json").stat().st_mtime_ns
    os.utime(run / "model.safetensors", ns=(info + 10**9, info + 10**9))
    best = (run / "model.safetensors").read_bytes()
    assert main(["average", str(run), "--last", "3"]) == 0
    assert (run / "model.best.safetensors").read_bytes() == best


def test_an_average_is_known_as_one_after_a_resume_and_a_copy(run_dir, tmp_path):
    """A resume rewrites config.json (its "averaged_from" mark is gone) and a copy gives new file times: the
    average's own weights still say what they are, so a second in-place average keeps the true best model."""
    import os
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    best = (run / "model.safetensors").read_bytes()
    assert main(["average", str(run), "--last", "3"]) == 0
    config = json.loads((run / "config.json").read_text())
    del config["averaged_from"]
    (run / "config.json").write_text(json.dumps(config))
    info = (run / "training.json").stat().st_mtime_ns
    os.utime(run / "model.safetensors", ns=(info - 10**9, info - 10**9))
    assert main(["average", str(run), "--last", "2"]) == 0
    assert (run / "model.best.safetensors").read_bytes() == best  # was: replaced by the first average


def test_a_final_save_just_after_a_regular_one_is_averaged_once(data_dir, tmp_path):
    """Saves every 4 updates, the run ends at 9: checkpoints 4, 8, 9. The last 2 were 8 and 9, one model twice
    (the clock recipes end on time a few updates after a regular save): now 4 and 9, save_every apart, and
    keep_last 2 keeps both (it pruned 4)."""
    from seqformer.training.average import average_tensors

    run = tmp_path / "run"
    train(tiny_config(data_dir, run, max_steps=9, save_every=4, keep_last=2), progress=False)
    names = [p.name for p in ckpt.list_checkpoints(run / "checkpoints")]
    assert names == [f"ckpt-{s:08d}.safetensors" for s in (4, 8, 9)]
    out = average_checkpoints(run, 2, tmp_path / "avg")
    assert json.loads((out / "config.json").read_text())["averaged_from"] == [names[0], names[2]]
    want = average_tensors([ckpt.checkpoint_path(run / "checkpoints", s) for s in (4, 9)])
    got = load_weights(out / "model.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_averaging_more_checkpoints_than_kept_says_so(run_dir, tmp_path):
    with pytest.warns(UserWarning, match="holds 4 checkpoint.*fewer than --last 10: averaging those 4"):
        out = average_checkpoints(run_dir, 10, tmp_path / "avg")
    assert len(json.loads((out / "config.json").read_text())["averaged_from"]) == 4


def test_csv_log_has_the_jsonl_rows(run_dir):
    records = read_log(run_dir / "train_log.jsonl")
    with open(run_dir / "train_log.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == len(records) == 10
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in records]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_has_the_logged_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    records = [r for r in read_log(run_dir / "train_log.jsonl") if "loss" in r]
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [r["step"] for r in records]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)


def test_epochs_end_the_run_with_the_last_batch_of_the_last_epoch(data_dir, tmp_path):
    from collections import Counter

    def updates(name):
        return [r for r in read_log(tmp_path / name / "train_log.jsonl") if "loss" in r]

    train(tiny_config(data_dir, tmp_path / "one", max_steps=0, epochs=1, save_every=1000), progress=False)
    two = tiny_config(data_dir, tmp_path / "two", max_steps=0, epochs=2, save_every=1000)
    train(two, progress=False)
    one, both = updates("one"), updates("two")
    assert len(one) > 1 and {r["epoch"] for r in one} == {0}
    assert [r["step"] for r in both] == list(range(1, len(both) + 1))  # log_every 1: every update
    per_epoch = Counter(r["epoch"] for r in both)
    assert set(per_epoch) == {0, 1} and per_epoch[0] == len(one) and per_epoch[1] > 0  # no update of a third
    train(two, resume=True, progress=False)  # a finished run: resuming it adds nothing
    assert len(updates("two")) == len(both)


def test_an_epochs_run_with_update_freq_trains_its_last_epoch_once_and_no_further(data_dir, tmp_path):
    def updates(name):
        return [r for r in read_log(tmp_path / name / "train_log.jsonl") if "loss" in r]

    train(tiny_config(data_dir, tmp_path / "one", max_steps=0, epochs=1, save_every=1000), progress=False)
    n = len(updates("one"))  # one update per batch
    k = next(k for k in range(2, n + 2) if n % k)  # updates of k batches that do not divide the epoch
    train(tiny_config(data_dir, tmp_path / "grouped", max_steps=0, epochs=1, update_freq=k, save_every=1000),
          progress=False)
    grouped = updates("grouped")
    assert len(grouped) == -(-n // k) and {r["epoch"] for r in grouped} == {0}
    # every batch of the epoch once: the last update was filled up from a second pass over the data
    assert sum(r["tokens"] for r in grouped) == sum(r["tokens"] for r in updates("one"))


@pytest.mark.parametrize(("ranks", "update_freq", "groups", "end"), [
    (1, 3, [[0, 1, 2], [3, 4]], (0, 5)),  # the last update: the last epoch's last batches, nothing more
    (2, 2, [[0, 1, 2, 3], [4, 100]], (1, 1)),  # one batch left for two ranks: one of the next pass, no more
    (2, 1, [[0, 1], [2, 3], [4, 100]], (1, 1)),
    (5, 1, [[0, 1, 2, 3, 4]], (0, 5)),
])
def test_the_last_update_of_an_epochs_run_takes_what_the_ranks_need_and_no_more(ranks, update_freq, groups, end):
    from types import SimpleNamespace

    state = SimpleNamespace(epoch=0, batch_in_epoch=0)
    stub = SimpleNamespace(cfg=SimpleNamespace(update_freq=update_freq, epochs=1), dist=SimpleNamespace(world_size=ranks),
                           state=state, epoch_batches=lambda: [b + 100 * state.epoch for b in range(5)])
    taken = [trainer_mod.Trainer.next_indices(stub) for _ in groups]  # 5 batches an epoch (here: numbers)
    assert taken == groups and (state.epoch, state.batch_in_epoch) == end


def test_a_large_seed_trains(data_dir, tmp_path):
    # seed * the epoch stride overflowed torch's 64-bit seed: a traceback at the first batch, after the corpus,
    # the tokenizer and the model were made
    train(tiny_config(data_dir, tmp_path / "run", max_steps=2, epochs=0, seed=2**62, save_every=1000), progress=False)
    assert [r["step"] for r in read_log(tmp_path / "run" / "train_log.jsonl") if "loss" in r] == [1, 2]


def test_training_gives_the_callers_thread_count_back(data_dir, tmp_path):
    before = torch.get_num_threads()
    run = 2 if before == 1 else 1
    train(tiny_config(data_dir, tmp_path / "run", max_steps=1, threads=run, save_every=1000), progress=False)
    assert torch.get_num_threads() == before  # was left at the run's --threads: a notebook then decoded on it


def test_shared_embeddings_need_a_joint_vocabulary(data_dir, tmp_path):
    # equal vocabulary sizes passed ModelConfig's check: source piece i and target piece i shared one row
    cfg = tiny_config(data_dir, tmp_path / "run", tokenizer="", joint_vocab=False, vocab_size=64)
    with pytest.raises(ConfigError, match="share_embeddings needs one tokenizer for both sides"):
        train(cfg, {"share_embeddings": True}, progress=False)
    assert not (tmp_path / "run" / "config.json").exists()
    # one tokenizer file given is a joint vocabulary, whatever joint_vocab says
    joint = tiny_config(data_dir, tmp_path / "joint", joint_vocab=False, max_steps=1, save_every=1000)
    train(joint, {"share_embeddings": True}, progress=False)
    assert json.loads((tmp_path / "joint" / "config.json").read_text())["model"]["share_embeddings"] is True


def test_early_stopping_keeps_the_best_model(data_dir, tmp_path, monkeypatch):
    scores = iter([3.0, 2.0, 2.5, 2.0, 2.2])  # valid NLL (4 checks + the final one): best at step 4
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"valid_nll": next(scores)})
    cfg = tiny_config(data_dir, tmp_path / "run", valid=str(data_dir / "valid.tsv"), valid_every=2, patience=2,
                      max_steps=100, valid_bleu_lines=0)
    train(cfg, progress=False)
    records = read_log(tmp_path / "run" / "train_log.jsonl")
    checks = [r["step"] for r in records if "valid_nll" in r and not r.get("final")]
    assert checks == [2, 4, 6, 8]  # no improvement at 6 and 8: patience 2 stops there
    assert max(r["step"] for r in records) == 8
    info = json.loads((tmp_path / "run" / "training.json").read_text())
    assert info["step"] == 4 and info["best_valid"] == -2.0  # model.safetensors is the best, not the last
    # ... and so are its weights (the record alone would pass if a later save wrote the last model)
    shipped = load_weights(tmp_path / "run" / "model.safetensors")
    best, last = (ckpt.model_tensors(ckpt.checkpoint_path(tmp_path / "run" / "checkpoints", s)) for s in (4, 8))
    assert all(torch.equal(shipped[k], best[k]) for k in shipped)
    assert not all(torch.equal(shipped[k], last[k]) for k in shipped)


def test_the_last_checkpoint_holds_the_final_validation(data_dir, tmp_path, monkeypatch):
    """The final validation (none in the loop at step 5) runs before the last save, so a --resume continues
    from its best score: a later, worse check must not overwrite the best model."""
    scores = iter([2.0, 1.0])  # valid NLL: check at step 4, then the final one at step 5 (the best)
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"valid_nll": next(scores)})
    cfg = tiny_config(data_dir, tmp_path / "run", valid=str(data_dir / "valid.tsv"), valid_every=4, save_every=100,
                      max_steps=5, valid_bleu_lines=0)
    train(cfg, progress=False)
    path, _, meta = ckpt.load_latest(tmp_path / "run" / "checkpoints")
    state = json.loads(meta["state"])
    assert path.name == "ckpt-00000005.safetensors" and state["best_metric"] == -1.0 and state["bad_validations"] == 0

    # --resume on the finished run (a job script that always passes it): nothing to validate or save again
    # (was: a second final validation, a second "final" log row, bad_validations + 1, the checkpoint rewritten)
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"valid_nll": 3.0})
    before = (tmp_path / "run" / "train_log.jsonl").read_text(), path.read_bytes()
    train(cfg, resume=True, progress=False)
    assert ((tmp_path / "run" / "train_log.jsonl").read_text(), path.read_bytes()) == before


def test_init_from_starts_from_a_model_directory_with_its_tokenizer_and_architecture(run_dir, data_dir, tmp_path):
    # A different preset and no tokenizer in the recipe: both come from the model directory.
    cfg = tiny_config(data_dir, tmp_path / "more", max_steps=1, init_from=str(run_dir), tokenizer="", preset="small")
    train(cfg, progress=False)
    fresh = tiny_config(data_dir, tmp_path / "fresh", max_steps=1)
    train(fresh, progress=False)
    config = json.loads((tmp_path / "more" / "config.json").read_text())
    assert config["model"] == json.loads((run_dir / "config.json").read_text())["model"]
    assert (tmp_path / "more" / "spm.model").read_bytes() == (data_dir / "spm.model").read_bytes()
    first_loss = {name: read_log(tmp_path / name / "train_log.jsonl")[0]["loss"] for name in ("more", "fresh")}
    trained_loss = [r["loss"] for r in read_log(run_dir / "train_log.jsonl") if "loss" in r][-1]
    assert first_loss["more"] < first_loss["fresh"] and first_loss["more"] < 1.5 * trained_loss


def test_a_max_len_beyond_the_models_positions_is_refused_before_training(run_dir, data_dir, tmp_path):
    positions = json.loads((run_dir / "config.json").read_text())["model"]["max_positions"]
    cfg = tiny_config(data_dir, tmp_path / "more", max_steps=1, init_from=str(run_dir), tokenizer="",
                      max_len=positions + 1)
    with pytest.raises(ConfigError, match=f"max_len={positions + 1} .* max_positions={positions}"):
        train(cfg, progress=False)
    assert not list((tmp_path / "more").glob("checkpoints/*.safetensors"))
    with pytest.raises(ConfigError, match="max_len=40 .* max_positions=32"):
        train(tiny_config(data_dir, tmp_path / "fresh", max_steps=1, max_len=40), {"max_positions": 32}, progress=False)
    train(replace(cfg, max_len=positions, out=str(tmp_path / "ok")), progress=False)  # the longest allowed


def test_init_from_knows_a_given_tokenizer_by_its_content(run_dir, data_dir, tmp_path):
    """A --tokenizer beside --init-from must be the model's own: checked by content (was by file name: the
    model's own joint file was refused, one name against the pair, and another tokenizer of the same name
    was silently replaced by the model's)."""
    from seqformer.data.tokenizer import train_sentencepiece

    cfg = tiny_config(data_dir, tmp_path / "same", max_steps=1, init_from=str(run_dir),
                      tokenizer=str(run_dir / "spm.model"))
    train(cfg, progress=False)
    other = tmp_path / "other" / "spm.model"
    other.parent.mkdir()
    train_sentencepiece(["one two three four five six seven eight nine ten"] * 5, other, 30, "bpe")
    with pytest.raises(ConfigError, match="brings its own tokenizer: drop --tokenizer"):
        train(replace(cfg, out=str(tmp_path / "other-run"), tokenizer=str(other)), progress=False)


def test_init_from_rejects_a_recipe_with_another_architecture(run_dir, data_dir, tmp_path):
    d_model = json.loads((run_dir / "config.json").read_text())["model"]["d_model"]
    cfg = tiny_config(data_dir, tmp_path / "more", max_steps=1, init_from=str(run_dir), tokenizer="")
    train(cfg, {"d_model": d_model}, progress=False)  # the same value is no clash
    with pytest.raises(ConfigError, match="d_model"):
        train(replace(cfg, out=str(tmp_path / "other")), {"d_model": 2 * d_model}, progress=False)


def test_init_from_ignores_how_fresh_weights_would_be_drawn(run_dir, data_dir, tmp_path):
    # init / init_std only choose a scratch model's first weights, which --init-from replaces: no clash.
    cfg = tiny_config(data_dir, tmp_path / "more", max_steps=1, init_from=str(run_dir), tokenizer="")
    train(cfg, {"init": "normal", "init_std": 0.05}, progress=False)
    config = json.loads((tmp_path / "more" / "config.json").read_text())
    assert config["model"] == json.loads((run_dir / "config.json").read_text())["model"]


def test_a_time_limit_that_cuts_the_cooldown_says_so(data_dir, tmp_path, caplog):
    """--max-minutes ending a run before its cool-down leaves the model at full learning rate: a warning."""
    import logging

    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=1000, cooldown_steps=500, max_minutes=1e-6)
    with caplog.at_level(logging.WARNING, logger="seqformer"):
        train(cfg, progress=False)
    assert "--max-minutes ended the run at update 1 of max_steps=1000: the cool-down over the last 500 updates " \
           "never began" in caplog.text


def test_an_epoch_limit_that_cuts_the_cooldown_says_so(data_dir, tmp_path, caplog):
    """--epochs ending a run before its cool-down by updates (was: ended at full rate without a word)."""
    import logging

    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=1000, cooldown_steps=500, epochs=1)
    with caplog.at_level(logging.WARNING, logger="seqformer"):
        train(cfg, progress=False)
    assert re.search(r"--epochs ended the run at update \d+ of max_steps=1000: the cool-down over the last 500 "
                     r"updates never began", caplog.text)


def test_pairs_longer_than_max_tokens_are_named_in_a_warning(data_dir, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="seqformer"):
        train(tiny_config(data_dir, tmp_path / "ok", max_steps=1), progress=False)
    assert "longer than max_tokens" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="seqformer"):
        train(tiny_config(data_dir, tmp_path / "small", max_steps=1, max_tokens=6), progress=False)
    assert "longer than max_tokens=6 subwords" in caplog.text  # was: silently over budget


def test_a_bleu_tie_goes_to_the_lower_dev_nll(data_dir, tmp_path, monkeypatch):
    # Early checks of a run often all score BLEU 0.0: the model that predicts better is the one to keep,
    # and it is progress for patience (was: the first check's weights kept, patience used up).
    checks = iter([{"bleu": 0.0, "valid_nll": 3.0}, {"bleu": 0.0, "valid_nll": 2.0}, {"bleu": 0.0, "valid_nll": 2.5}])
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: next(checks))
    cfg = tiny_config(data_dir, tmp_path / "run", valid=str(data_dir / "valid.tsv"), valid_every=2, save_every=100,
                      max_steps=6)
    train(cfg, progress=False)
    info = json.loads((tmp_path / "run" / "training.json").read_text())
    state = json.loads(ckpt.load_latest(tmp_path / "run" / "checkpoints")[2]["state"])
    assert info["step"] == 4 and state["best_nll"] == 2.0 and state["bad_validations"] == 1


def test_a_changed_validation_metric_on_resume_chooses_the_best_model_afresh(data_dir, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"bleu": 30.0, "valid_nll": 1.0})
    cfg = tiny_config(data_dir, tmp_path / "run", valid=str(data_dir / "valid.tsv"), valid_every=2, save_every=2,
                      max_steps=2)
    train(cfg, progress=False)
    # --resume with valid_bleu_lines=0: -NLL (-1.5) would never beat BLEU 30 (was: the best model frozen for good)
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"valid_nll": 1.5})
    with caplog.at_level(logging.WARNING, logger="seqformer"):
        train(replace(cfg, max_steps=4, valid_bleu_lines=0), resume=True, progress=False)
    assert "choosing afresh" in caplog.text
    assert json.loads((tmp_path / "run" / "training.json").read_text())["step"] == 4


def test_a_changed_validation_on_resume_chooses_the_best_model_afresh(data_dir, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"bleu": 30.0, "valid_nll": 1.0})
    cfg = tiny_config(data_dir, tmp_path / "run", valid=str(data_dir / "valid.tsv"), valid_every=2, save_every=2,
                      max_steps=2)
    train(cfg, progress=False)
    # beam 4 instead of greedy: its BLEU does not compare with the greedy 30 (was: the step-2 model kept for good)
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"bleu": 20.0, "valid_nll": 1.5})
    with caplog.at_level(logging.WARNING, logger="seqformer"):
        train(replace(cfg, max_steps=4, valid_beam_size=4), resume=True, progress=False)
    assert "valid_beam_size changed" in caplog.text and "choosing afresh" in caplog.text
    assert json.loads((tmp_path / "run" / "training.json").read_text())["step"] == 4


def test_a_changed_beam_does_not_reset_a_choice_made_by_nll(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"valid_nll": 1.0})
    cfg = tiny_config(data_dir, tmp_path / "run", valid=str(data_dir / "valid.tsv"), valid_every=2, save_every=2,
                      max_steps=2, valid_bleu_lines=0)
    train(cfg, progress=False)
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"valid_nll": 1.5})  # worse, and comparable
    train(replace(cfg, max_steps=4, valid_beam_size=4), resume=True, progress=False)  # the beam serves BLEU only
    assert json.loads((tmp_path / "run" / "training.json").read_text())["step"] == 2


def test_averaging_checkpoints_of_different_models_is_a_one_line_error(run_dir, tmp_path):
    from safetensors.torch import save_file

    from seqformer.errors import ModelDirError
    from seqformer.training.average import average_tensors

    first, second = ckpt.list_checkpoints(run_dir / "checkpoints")[-2:]
    tensors, meta = ckpt.read_checkpoint(second)
    name = next(k for k in tensors if k.startswith("model.") and tensors[k].dim() == 2)

    grown = dict(tensors, **{name: torch.zeros(tensors[name].size(0) + 1, tensors[name].size(1))})
    save_file(grown, tmp_path / "grown.safetensors", metadata=dict(meta, sha256=ckpt._digest(grown)))
    with pytest.raises(ModelDirError, match=rf"grown\.safetensors: {name[6:]} has shape .* not the same model"):
        average_tensors([first, tmp_path / "grown.safetensors"])  # was: a raw RuntimeError from the in-place add
    fewer = {k: v for k, v in tensors.items() if k != name}
    save_file(fewer, tmp_path / "fewer.safetensors", metadata=dict(meta, sha256=ckpt._digest(fewer)))
    with pytest.raises(ModelDirError, match=rf"fewer\.safetensors: not the same model .*{name[6:]}"):
        average_tensors([first, tmp_path / "fewer.safetensors"])  # was: silently averaged the rest
