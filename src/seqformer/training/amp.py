"""Mixed precision: bf16 autocast on CPUs and GPUs that support it, fp16 autocast with a
dynamic loss scaler on GPUs that do not, or plain fp32."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from seqformer.errors import ConfigError


def bf16_supported(device: torch.device | None = None) -> bool:
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_avx512_bf16_supported())  # noqa: SLF001
    except AttributeError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` becomes bf16 where supported, else fp16 on GPUs and fp32 on CPUs."""
    if precision == "auto":
        if bf16_supported(device):
            return "bf16"
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA GPU: use bf16 or fp32 on CPU")
    return precision


class Amp:
    """Autocast context and (fp16 only) gradient scaling for one device."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.name = resolve_precision(precision, device)
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)
        self.scaler = torch.amp.GradScaler(device.type) if self.name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
            return
        self.scaler.step(opt)
        self.scaler.update()

    def skipped(self, unscaled: bool) -> None:
        """After a skipped update: an overflow lowers the loss scale."""
        if self.scaler is not None and unscaled:
            self.scaler.update()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.scaler is None:
            return {}
        sd = self.scaler.state_dict()
        return {"amp.scale": torch.tensor(float(sd["scale"])), "amp.growth_tracker": torch.tensor(int(sd["_growth_tracker"]))}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.scaler is not None and "amp.scale" in tensors:
            sd = self.scaler.state_dict()
            sd.update(scale=float(tensors["amp.scale"]), _growth_tracker=int(tensors["amp.growth_tracker"]))
            self.scaler.load_state_dict(sd)
