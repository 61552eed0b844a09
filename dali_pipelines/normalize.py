"""ImageNet normalisation of uint8 clips and random erasing, in torch on the clips' device.

The loaders yield float32 normalised clips by default (DALI normalises) or, with
`normalize=False`, the uint8 clips and the erase boxes they drew; the training step then
normalises on its device with `Normalize` and erases with `erase_` in normalised space, as timm's
RandomErasing does. No DALI here: the trainer imports this module without building a pipeline.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize:
    """(B, 3, T, H, W) uint8 -> float32 (x / 255 - mean) / std, as one fused op on the clips'
    device: x * 1 / (255 std) + (-mean / std), channels broadcast. The two (1, 3, 1, 1, 1)
    constants are made once per device (making them per call would copy from the host)."""

    def __init__(self, device: torch.device | str):
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
        shape = (1, 3, 1, 1, 1)
        self.scale = (1 / (255 * std)).float().view(shape).to(device)
        self.shift = (-mean / std).float().view(shape).to(device)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        if video.dtype != torch.uint8:
            raise TypeError(f"Normalize takes uint8 clips, got {video.dtype}")
        return torch.addcmul(self.shift, video, self.scale)  # (B, 3, T, H, W) float32

    def into(self, out: torch.Tensor, clip: torch.Tensor) -> None:
        """One (3, T, H, W) uint8 clip normalised into the float32 tensor `out` (same shape)."""
        torch.addcmul(self.shift[0], clip, self.scale[0], out=out)


def erase_(video: torch.Tensor, boxes: np.ndarray, generator: torch.Generator | None = None) -> None:
    """Random erasing in place, pixel mode: video (V, C, T, H, W) normalised; boxes (V, T, 4)
    int host rows (top, left, h, w), h == 0 for none; erased pixels ~ N(0, 1) from `generator`
    (torch's default generator of the device when None). The boxes are host ints, so erasing
    reads nothing back from the device."""
    for v, t in zip(*np.nonzero(boxes[:, :, 2])):
        top, left, h, w = (int(x) for x in boxes[v, t])
        noise = torch.randn((video.shape[1], h, w), generator=generator, device=video.device,
                            dtype=video.dtype)
        video[v, :, t, top : top + h, left : left + w] = noise
