"""Device and precision choice and the embedder: uint8 patches in, float32 embeddings out."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from featstore.encoders import Encoder
from featstore.errors import DeviceError


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device on this machine; "
                          "use --device cpu (or auto)")
    return torch.device(device)


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
BF16_MIN_SPEEDUP = 1.2  # below this, fp32's exactness is worth more than bf16's speed


def cpu_bf16_flags() -> list[str]:
    """The bf16 matrix/vector units this CPU announces (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return [f for f in BF16_CPU_FLAGS if f in flags]


def resolve_precision(precision: str, device: torch.device, encoder: Encoder | None = None,
                      patch_size: int = 224, existing: str | None = None) -> tuple[str, str]:
    """The precision to run in, and why. ``auto``: bf16 on a GPU that has it (fp16 otherwise); on a CPU,
    the precision of the feature set being resumed (``existing``), else bf16 where the CPU has bf16 units
    and a short timing of ``encoder`` finds it at least BF16_MIN_SPEEDUP x fp32, else fp32."""
    if precision != "auto":
        return precision, "given"
    if device.type == "cuda":
        return ("bf16", "auto: GPU has bf16") if torch.cuda.is_bf16_supported() else ("fp16", "auto: GPU lacks bf16")
    if existing in ("fp32", "bf16"):
        return existing, f"auto: the feature set being resumed was made in {existing}"
    flags = cpu_bf16_flags()
    if not flags:
        return "fp32", "auto: this CPU has no bf16 units"
    if encoder is None:
        return "fp32", "auto: not measured"
    if encoder.spec.get("precision") in ("bf16", "fp16"):
        # Its authors run it in half precision, and timing a ViT-g on a CPU would take minutes before the run.
        return "bf16", (f"auto: CPU has {'+'.join(flags)}; {encoder.name}'s authors run it in "
                        f"{encoder.spec['precision']} (not timed)")
    speedup = _bf16_speedup(encoder, patch_size)
    if speedup >= BF16_MIN_SPEEDUP:
        return "bf16", f"auto: CPU has {'+'.join(flags)}; bf16 measured {speedup:.1f}x fp32 at start"
    return "fp32", f"auto: CPU has {'+'.join(flags)} but bf16 measured only {speedup:.1f}x fp32 at start"


def _bf16_speedup(encoder: Encoder, patch_size: int, batch: int = 8) -> float:
    """fp32 time over bf16 time for one small batch (after one warm-up each): about a second on 2 cores."""
    x = torch.randint(0, 256, (batch, patch_size, patch_size, 3), dtype=torch.uint8)
    times = {}
    for precision in ("fp32", "bf16"):
        embed = PatchEmbedder(encoder, torch.device("cpu"), precision)
        embed(x)
        t0 = time.perf_counter()
        embed(x)
        times[precision] = time.perf_counter() - t0
    return times["fp32"] / max(times["bf16"], 1e-9)


class PatchEmbedder:
    """uint8 NHWC patches on any device in, float32 embeddings out: normalisation runs on the device."""

    def __init__(self, encoder: Encoder, device: torch.device, precision: str):
        self.device, self.precision = device, precision
        self.model = encoder.model.to(device).to(memory_format=torch.channels_last)
        mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add pass over the batch.
        self.scale, self.shift = 1 / (255 * std), -mean / std
        self._autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @torch.inference_mode()
    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = torch.addcmul(self.shift, x, self.scale).contiguous(memory_format=torch.channels_last)
        if self._autocast is not None:
            with torch.autocast(self.device.type, dtype=self._autocast):
                return self.model(x).float()
        return self.model(x)
