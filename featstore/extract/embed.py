"""Device and precision choice and the embedder: uint8 patches in, float32 embeddings out."""

from __future__ import annotations

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


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # CPU autocast is slower than fp32 on CPUs without bf16 matrix units


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
