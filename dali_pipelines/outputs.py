"""The names of what flows between the loader's stages, defined once.

- `Outputs.reader`: the arrays `ClipReader` returns per sample, in order (the DALI external
  source's outputs);
- `Outputs.stage`: the DataNodes the DALI pipeline returns per batch, in order (what the loaders
  turn into tensors).

Both are built from the `ReaderConfig` (and whether a separate teacher view is made) by
`Outputs.of`; the reader, `graph.build` and the loaders look outputs up by these names and
never by position. Per-view names carry the view number: `per_view("video", 1) == "video1"`.

Reader outputs (per sample): `data` (video bytes, or decoded (F, H, W, 3) frames on the PyAV
path), `frames` (int32 frame indices, DALI decode only), per view `roi` (float32 [y0, x0, y1,
x1]), `flip` (int32), `ra_ops` / `ra_mags` / `ra_signs` (int32 (n,), RandAugment), `erase`
(int32 (T, 4) boxes), then `info` (int64 [sample, failed item or -1, clip]) and `error` (uint8
message).

Stage outputs (per batch), by where the views are cropped and resized (`resize`):
- "dali" (GPU loaders): per view `video` (3, T, S, S) and, with a separate teacher size,
  `teacher` (3, T, S_t, S_t); `info`, `error`; per view `erase` when erasing is drawn.
- "torch" (CPU loaders, see `tensors.crop_resize`): the decoded (F, H, W, 3) uint8 `clip` (one
  per view, `clip{v}`, when RandAugment makes the views differ; else `clip0` serves them all),
  per view the reader's `roi` (and `flip`), `info`, `error`, and `erase` as above.
A decode-only stage (what `mvd-bench loader` times as decoding alone) returns `decoded` (the
(F, H, W, 3) frames), `info`, `error`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from dali_pipelines.reader_config import ReaderConfig


def per_view(name: str, view: int) -> str:
    """The name of a per-view output: per_view("roi", 0) == "roi0"."""
    return f"{name}{view}"


@dataclass(frozen=True)
class Outputs:
    """The reader's and the DALI stage's output names, in order, for one pipeline."""

    reader: tuple[str, ...]
    stage: tuple[str, ...]
    num_views: int
    teacher: bool  # a separate teacher-size view of every view
    decode_only: bool = False  # the stage stops after decoding
    resize: str = "dali"  # "dali": the stage returns the views; "torch": the clips and rois

    @classmethod
    def of(cls, cfg: ReaderConfig, teacher: bool = False, decode_only: bool = False,
           resize: str = "dali") -> Outputs:
        if resize not in ("dali", "torch"):
            raise ValueError(f"resize must be 'dali' or 'torch', got {resize!r}")
        reader = ["data"] + (["frames"] if cfg.decode == "dali" else [])
        stage = []
        for v in range(cfg.num_views):
            reader.append(per_view("roi", v))
            if cfg.flip:
                reader.append(per_view("flip", v))
            if cfg.rand_augment is not None:
                reader += [per_view("ra_ops", v), per_view("ra_mags", v), per_view("ra_signs", v)]
            if cfg.erase_prob > 0:
                reader.append(per_view("erase", v))
            if resize == "dali":
                stage.append(per_view("video", v))
                if teacher:
                    stage.append(per_view("teacher", v))
            else:
                if v == 0 or cfg.rand_augment is not None:
                    stage.append(per_view("clip", v))
                stage.append(per_view("roi", v))
                if cfg.flip:
                    stage.append(per_view("flip", v))
        reader += ["info", "error"]
        stage += ["info", "error"]
        if cfg.erase_prob > 0:
            stage += [per_view("erase", v) for v in range(cfg.num_views)]
        if decode_only:  # the reader returns only what the decoder takes
            reader = [n for n in reader if n in ("data", "frames", "info", "error")]
            stage = ["decoded", "info", "error"]
        return cls(tuple(reader), tuple(stage), cfg.num_views, teacher, decode_only, resize)

    def clip(self, view: int) -> str:
        """The stage output holding the frames of `view` (resize "torch")."""
        return per_view("clip", view if per_view("clip", view) in self.stage else 0)

    def reader_tuple(self, named: dict) -> tuple:
        """The reader's per-sample dict as the tuple DALI's external source takes."""
        return tuple(named[n] for n in self.reader)

    def stage_tuple(self, named: dict) -> tuple:
        """The pipeline's DataNodes by name as the tuple its definition returns."""
        return tuple(named[n] for n in self.stage)

    def named(self, outputs: Sequence) -> dict:
        """A pipeline run's outputs (in `stage` order) by name."""
        if len(outputs) != len(self.stage):
            raise RuntimeError(f"the pipeline returned {len(outputs)} outputs, expected "
                               f"{len(self.stage)}: {', '.join(self.stage)}")
        return dict(zip(self.stage, outputs))
