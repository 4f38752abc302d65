"""Device and precision for training, chosen where the training runs (a subprocess, a pod) and checked up front."""

from __future__ import annotations

from dataclasses import dataclass

import torch


DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class DeviceUnavailableError(RuntimeError):
    """The requested device or precision does not exist on this machine."""


@dataclass(frozen=True)
class Placement:
    device: str
    precision: str

    @property
    def description(self) -> str:
        name = torch.cuda.get_device_name(0) if self.device == "cuda" else self.device
        return f"{name} ({self.precision})"


def _available() -> dict[str, bool]:
    return {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}


def resolve_placement(
    device: str, precision: str, stage: str = "training", setting: str = "the training resource's device"
) -> Placement:
    """``auto`` picks cuda, then mps, then cpu; precision ``auto`` is bf16 on a GPU that has it, fp16 on
    other CUDA GPUs, fp32 on mps and cpu (CPU bf16 autocast is slower than fp32 on most CPUs).
    Training and evaluation share the rule; ``stage`` and ``setting`` name where the device was asked for."""
    if device not in DEVICES:
        raise DeviceUnavailableError(f"unknown {stage} device {device!r}; use one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise DeviceUnavailableError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    available = _available()
    if device == "auto":
        device = next(name for name in ("cuda", "mps", "cpu") if available[name])
    elif not available[device]:
        present = ", ".join(name for name, ok in available.items() if ok)
        raise DeviceUnavailableError(
            f"{stage} device {device!r} is not available on this machine (available: {present}); "
            f"set {setting} to 'auto' or one of those"
        )
    bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        precision = "bf16" if bf16_ok else "fp16" if device == "cuda" else "fp32"
    elif precision == "bf16" and device != "cpu" and not bf16_ok:
        raise DeviceUnavailableError(f"bf16 is not supported on {device}; use precision 'fp16', 'fp32' or 'auto'")
    elif precision == "fp16" and device == "cpu":
        raise DeviceUnavailableError("fp16 mixed precision needs a GPU; on cpu use precision 'fp32' or 'bf16'")
    return Placement(device, precision)
