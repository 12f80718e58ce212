"""Inference-only fp32 linear layers over oneDNN's prepacked weights (CPU).

A decoding step is mostly matrix products of a few hundred rows against fixed weights. oneDNN
runs them faster from a weight reordered once into its own blocked layout than MKL runs
``linear()`` from the plain one (``benchmarks/packed_linear.py``). Same values: results agree to
float rounding. The reordered weight is an opaque
tensor that takes no gradient, so only inference copies of a model are
packed (:meth:`seqformer.translator.Translator.load`), never one that trains; ``state_dict()``,
copies and pickles carry the plain weight, so a packed model still saves like a plain one.
``.to()``, ``.half()``, ``.double()`` and the like cast the plain weight; a layer so moved off
fp32 on the CPU computes with ``linear()`` over it, and is packed again when cast back.
Where PyTorch has no oneDNN (or its private ops change), :func:`pack_linears` packs nothing and
the model keeps its plain layers.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PackedLinear(nn.Module):
    """``nn.Linear``'s forward over a weight prepacked for oneDNN; inference only."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """weight: (out, in), packed when float32 on the CPU (else kept plain); bias: (out,) or None. Both are copied."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # plain attributes, not buffers: the opaque tensor must stay out of nn.Module's own .to() (see _apply)
        self.packed: Tensor | None = None  # (out, in), oneDNN's layout; None when cast off fp32 / CPU
        self.plain: Tensor | None = None  # (out, in), the weight itself when it cannot be packed
        self._store(weight, bias)

    def _store(self, weight: Tensor, bias: Tensor | None) -> None:
        """Keep copies of ``weight`` (packed where oneDNN takes it, else plain) and ``bias``."""
        weight = weight.detach()
        self.packed, self.plain = (_pack(weight), None) if packable(weight) else (None, weight.clone())
        self.bias = None if bias is None else bias.detach().to(weight.dtype).clone()  # (out,)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_features), of the weight's dtype and device. Returns (..., out_features)."""
        if self.training:
            raise RuntimeError("PackedLinear is for inference: its weight takes no gradient (pack an eval() copy)")
        if self.packed is None:
            return F.linear(x, self.plain, self.bias)  # (..., out)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")  # (..., out)

    @property
    def weight(self) -> Tensor:
        """The plain (out, in) weight, unpacked anew on each access (exactly the packed values).

        A copy: writing into it changes nothing; ``load_state_dict()`` repacks new weights."""
        return self.packed.to_dense() if self.packed is not None else self.plain.clone()

    def _apply(self, fn, recurse: bool = True):  # noqa: ARG002 - no submodules
        # what .to(), .half(), .cuda(), .double() call: cast the plain weight, and pack it again if it is still
        # fp32 on the CPU (an opaque packed tensor cannot be cast, nor moved)
        weight = fn(self.weight)
        self._store(weight, None if self.bias is None else fn(self.bias))
        return self

    def __getstate__(self) -> dict:
        # copy.deepcopy and pickle cannot reach into the opaque tensor: carry the plain weight instead
        return {**self.__dict__, "packed": None, "plain": self.weight}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        plain = state["plain"] if "plain" in state else state["packed"]  # pickled before casts: the weight was there
        self._store(plain, state["bias"])

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        # the same keys as the nn.Linear it replaced, so a packed model saves and compares like a plain one
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        names = ("weight", "bias") if self.bias is not None else ("weight",)
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        unexpected = [prefix + "bias"] if self.bias is None and prefix + "bias" in state_dict else []
        missing_keys.extend(missing)
        unexpected_keys.extend(unexpected)
        if strict and (missing or unexpected):
            return  # a load that will be refused changes nothing here
        weight, bias = state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias")
        shapes = {"weight": (self.out_features, self.in_features), "bias": (self.out_features,)}
        for n, t in (("weight", weight), ("bias", bias)):
            if t is not None and n in names and tuple(t.shape) != shapes[n]:
                error_msgs.append(f"size mismatch for {prefix}{n}: expected {shapes[n]}, found {tuple(t.shape)}")
                return
        # copied into this layer's dtype and device, as nn.Linear copies into its parameters
        dtype, device = (self.plain.dtype, self.plain.device) if self.packed is None else (torch.float32, "cpu")
        self._store(self.weight if weight is None else weight.to(device, dtype),
                    self.bias if bias is None or self.bias is None else bias.to(device, dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _pack(weight: Tensor) -> Tensor:
    # no row-count hint: the rows vary (source tokens, beams, sentences dropped as they finish), and
    # no fixed hint measured faster than oneDNN's generic choice across them
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().contiguous(), None)


def packable(weight: Tensor) -> bool:
    """Whether ``weight`` is one oneDNN's fp32 packing takes: float32, on the CPU."""
    return weight.dtype == torch.float32 and weight.device.type == "cpu"


@functools.cache
def packing_available() -> bool:
    """Whether this PyTorch can prepack fp32 linear weights for oneDNN, and gets them right."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:  # fixed values, not random ones: probing must not move the user's random stream
        w = torch.arange(24, dtype=torch.float32).reshape(3, 8).sin()  # (out, in)
        b, x = torch.arange(3.0).cos(), torch.arange(40, dtype=torch.float32).reshape(5, 8).cos()  # (out,), (N, in)
        with torch.no_grad():
            return bool(torch.allclose(PackedLinear(w, b).eval()(x), F.linear(x, w, b), atol=1e-5))
    except Exception:  # private ops: missing, renamed or refusing this build all mean "not here"
        return False


def pack_linears(model: nn.Module) -> int:
    """Replace every fp32 CPU ``nn.Linear`` of an eval-mode ``model`` by a :class:`PackedLinear`.

    Returns how many were replaced: 0 where oneDNN packing is unavailable (the model is unchanged).
    """
    if model.training:
        raise ValueError("pack_linears: the model is in training mode; packed layers are for inference only")
    if not packing_available():
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and packable(child.weight)
    ]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child.weight, child.bias).eval())
    return len(targets)
