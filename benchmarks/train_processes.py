"""Training on a CPU: one process of N threads against N processes of one thread, same tokens per update.

    python benchmarks/train_processes.py                # the 40-minute Tatoeba recipe's model, 2 cores
    python benchmarks/train_processes.py --config recipes/multi30k-en-de.json --steps 60

Runs ``seqformer train`` twice on the recipe for --steps updates: once as one process with --cores
threads and the recipe's --max-tokens, once under torchrun as --cores processes of one thread each
(DistributedDataParallel over gloo) with max_tokens / cores each, so that every update sees about the
same number of tokens (both printed: the mean over the timed updates). Seconds per update come from
each run's own log, every update logged (``elapsed_s`` from update --skip to the last, so start-up,
the tokenizer and the first updates are left out). The runs follow one another, so drift of the
machine's speed between them is not averaged out. Only the untimed final validation (loss only) and
save happen. Needs the recipe's data (recipes/tatoeba_split.py for the default).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def seconds_per_update(run: Path, skip: int) -> tuple[float, float]:
    """(seconds per update, mean tokens per update) over the logged updates after the first ``skip``."""
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "elapsed_s" in r and r.get("step", 0) >= skip]  # update rows (validation has none)
    if len(rows) < 2:
        raise SystemExit(f"train_processes: {run}: fewer than 2 logged updates after update {skip}")
    first, last = rows[0], rows[-1]
    tokens = sum(r["tokens"] for r in rows[1:]) / len(rows[1:])  # the updates inside the timed window
    return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"]), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="recipes/tatoeba-en-fr-40min.json")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--skip", type=int, default=20, help="updates left out of the timing at the start")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--workdir", default="work/bench-processes")
    args = ap.parse_args()
    recipe = json.loads(Path(args.config).read_text())["train"]
    max_tokens = recipe.get("max_tokens", 4096)
    common = ["train", "--config", args.config, "--max-steps", str(args.steps), "--log-every", "1",
              "--valid-every", str(10 * args.steps), "--save-every", str(10 * args.steps), "--max-minutes", "0",
              "--valid-bleu-lines", "0", "--cooldown-steps", "0", "--cooldown-minutes", "0",  # clock recipes too
              "--quiet"]
    runs = {
        f"1 process x {args.cores} threads": [sys.executable, "-m", "seqformer", *common,
                                              "--threads", str(args.cores), "--max-tokens", str(max_tokens)],
        f"{args.cores} processes x 1 thread": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                               "--nproc-per-node", str(args.cores), "-m", "seqformer", *common,
                                               "--threads", "1", "--max-tokens", str(max_tokens // args.cores)],
    }
    results = {}
    for i, (name, cmd) in enumerate(runs.items()):
        out = Path(args.workdir) / f"run{i}"
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([*cmd, "--out", str(out)], check=True)
        results[name] = seconds_per_update(out, args.skip)
        print(f"{name}: {results[name][0]:.2f} s per update, {results[name][1]:.0f} tokens per update", flush=True)
    (one, _), (many, _) = results.values()
    print(f"{args.cores} processes x 1 thread: {one / many:.2f}x the updates per second of 1 process x "
          f"{args.cores} threads ({args.config}, updates {args.skip}..{args.steps})")


if __name__ == "__main__":
    main()
