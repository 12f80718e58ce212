"""Copy a trained model directory into the package as the bundled model, with fp16 weights.

    python recipes/export_bundled.py work/runs/tatoeba-en-fr-cycle4-last1 src/seqformer/models/en-fr

The new directory is built beside the old one and swapped in only when complete and within the
size bound, so an interrupted or oversized export leaves the shipped model as it was. Files the
export does not make (MODEL_CARD.md, ABOUT-manythings.txt) are carried over; nothing else is.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import save as st_save

from seqformer.data.tokenizer import Tokenizer
from seqformer.io import atomic_write_bytes, load_weights

MAX_BYTES = 25_000_000  # the bundled model's bound (issue 3)
KEPT = ("MODEL_CARD.md", "ABOUT-manythings.txt")


def build(src_dir: Path, stage: Path) -> None:
    config = json.loads((src_dir / "config.json").read_text())
    config["weights_dtype"] = "float16"
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_weights(src_dir / "model.safetensors").items()}
    atomic_write_bytes(stage / "model.safetensors", st_save(tensors))
    atomic_write_bytes(stage / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    for name in sorted(set(Tokenizer.files(config["tokenizer"]).values()) | {"training.json"}):
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, stage / name)


def main(src: str, dst: str) -> int:
    src_dir, dst_dir = Path(src), Path(dst)
    stage, old = dst_dir.with_name(f".{dst_dir.name}.new"), dst_dir.with_name(f".{dst_dir.name}.old")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        build(src_dir, stage)
        for name in KEPT:
            if (dst_dir / name).is_file():
                shutil.copyfile(dst_dir / name, stage / name)
        size = sum(p.stat().st_size for p in stage.iterdir())
        if size > MAX_BYTES:
            shutil.rmtree(stage)
            print(f"error: {src_dir} exports to {size / 1e6:.1f} MB, over the {MAX_BYTES / 1e6:.0f} MB bound; "
                  f"{dst_dir} left as it was", file=sys.stderr)
            return 1
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if dst_dir.exists():
        dst_dir.rename(old)
    stage.rename(dst_dir)
    shutil.rmtree(old, ignore_errors=True)
    print(f"bundled model written to {dst_dir} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
