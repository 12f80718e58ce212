"""Copy a trained model directory into the package as the bundled model, with fp16 weights.

    python recipes/export_bundled.py work/runs/tatoeba-en-fr-avg src/seqformer/models/en-fr
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import save as st_save

from seqformer.io import atomic_write_bytes, load_weights


def main(src: str, dst: str) -> None:
    src_dir, dst_dir = Path(src), Path(dst)
    dst_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((src_dir / "config.json").read_text())
    config["weights_dtype"] = "float16"
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_weights(src_dir / "model.safetensors").items()}
    atomic_write_bytes(dst_dir / "model.safetensors", st_save(tensors))
    (dst_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in {config["tokenizer"]["src"], config["tokenizer"]["tgt"], "training.json"}:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, dst_dir / name)
        elif name == "training.json":  # an averaged model has none: never leave an older model's behind
            (dst_dir / name).unlink(missing_ok=True)
    size = sum(p.stat().st_size for p in dst_dir.iterdir())
    print(f"bundled model written to {dst_dir} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
