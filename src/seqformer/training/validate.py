"""Validation during training: per-token NLL on the whole valid set and BLEU on a prefix."""

from __future__ import annotations

import copy
from dataclasses import replace

import sacrebleu
import torch

from seqformer.config import DecodeConfig, TrainConfig
from seqformer.data.batching import Example, bucket_batches, collate, encode_source, pad
from seqformer.data.tokenizer import Tokenizer
from seqformer.decoding import generate
from seqformer.evaluation import bleu_tokenizer
from seqformer.model.transformer import Seq2SeqTransformer
from seqformer.training.optim import batch_loss


@torch.no_grad()
def valid_nll(model: Seq2SeqTransformer, examples: list[Example], max_tokens: int) -> float:
    mc = model.cfg
    device = next(model.parameters()).device
    total = count = 0.0
    lengths = [(len(s), len(t) + 1) for s, t in examples]
    for idx in bucket_batches(lengths, max_tokens, seed=0, epoch=0):
        batch = collate([examples[i] for i in idx], mc.pad_id, mc.decoder_start_id, mc.eos_id)
        if device.type != "cpu":
            batch = replace(batch, src=batch.src.to(device), src_pad_mask=batch.src_pad_mask.to(device),
                            tgt_in=batch.tgt_in.to(device), tgt_out=batch.tgt_out.to(device))
        _, nll, n = batch_loss(model, batch, 0.0)
        total += float(nll)
        count += n
    return total / max(count, 1)


@torch.no_grad()
def translate_ids(model: Seq2SeqTransformer, src: list[list[int]], cfg: DecodeConfig) -> list[list[int]]:
    """Best hypothesis ids for each source id list (already ending in </s>), in input order."""
    order = sorted(range(len(src)), key=lambda i: -len(src[i]))
    out: list[list[int]] = [[] for _ in src]
    for start in range(0, len(order), cfg.batch_size):
        chunk = order[start : start + cfg.batch_size]
        batch = pad([src[i] for i in chunk], model.cfg.pad_id)  # (B, S)
        for i, nbest in zip(chunk, generate(model, batch, batch.eq(model.cfg.pad_id), cfg)):
            out[i] = nbest[0].tokens if nbest else []
    return out


def validate(model: Seq2SeqTransformer, tok: Tokenizer, examples: list[Example],
             pairs: list[tuple[str, str]], cfg: TrainConfig) -> dict[str, float]:
    model.eval()
    metrics = {"valid_nll": valid_nll(model, examples, cfg.max_tokens)}
    metrics["valid_ppl"] = float(torch.tensor(metrics["valid_nll"]).exp())
    if cfg.valid_bleu_lines > 0:
        subset = pairs[: cfg.valid_bleu_lines]
        mc = model.cfg
        src = [encode_source(s, mc.eos_id, mc.max_positions) for s in tok.encode_src([s for s, _ in subset])]
        # decoding/ builds its tensors on the CPU, so a GPU model is decoded from a CPU copy
        cpu_model = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu().eval()
        hyps = tok.decode_tgt(translate_ids(cpu_model, src, DecodeConfig(beam_size=cfg.valid_beam_size, batch_size=64)))
        metrics["bleu"] = sacrebleu.corpus_bleu(hyps, [[t for _, t in subset]], tokenize=bleu_tokenizer(cfg.tgt_lang)).score
    model.train()
    return metrics
