"""video_caps.decoders: what each decoder takes (the NVDEC table per GPU family, DALI's CPU
decoder, PyAV), decided as DALI's GPU decoder checks, and the size a stream is re-encoded to."""

import subprocess
import sys
from pathlib import Path

from video_caps.decoders import (CODEC, DEFAULT_TARGET, FORMAT, MACROBLOCKS, TOO_LARGE, TOO_SMALL, StreamFacts,
                                 add_kind, decoder, folder_refusal, kinds_refusals, reencode_plan, refusal)

ROOT = Path(__file__).resolve().parents[2]


def _facts(codec="h264", chroma="4:2:0", depth=8, w=640, h=480, coded=None) -> StreamFacts:
    cw, ch = coded or (w, h)
    return StreamFacts(codec, None, "x", chroma, depth, cw, ch, w, h, 25.0, 10, 10, False, False)


def test_decoder_table_per_gpu_family():
    hopper, ada, blackwell, cpu = (decoder(n) for n in ("gpu-hopper", "gpu-ada", "gpu-blackwell", "cpu-dali"))
    assert refusal(hopper, _facts("av1")).property == CODEC  # GA100/Hopper have no AV1 (application note)
    assert refusal(ada, _facts("av1")) is None
    assert refusal(hopper, _facts("hevc", "4:4:4", 10)) is None
    assert refusal(hopper, _facts("h264", "4:2:2", 10)).property == FORMAT
    assert refusal(blackwell, _facts("h264", "4:2:2", 10)) is None
    assert refusal(hopper, _facts("hevc", w=160, h=120)).property == TOO_SMALL  # HEVC from 144x144
    assert refusal(hopper, _facts("h264", w=4096, h=2304)) is None
    assert refusal(hopper, _facts("h264", w=4112, h=2160)).property == "too large"
    assert refusal(hopper, _facts("h264", w=30, h=40, coded=(32, 48))).property == TOO_SMALL
    assert refusal(cpu, _facts("h264")).property == CODEC and refusal(cpu, _facts("vp9", w=32, h=32)) is None
    assert decoder(DEFAULT_TARGET).codecs == hopper.codecs  # GA100 and Hopper share one column


def test_reencode_plan_scales_into_the_limits():
    gpu = decoder(DEFAULT_TARGET)
    assert reencode_plan(gpu, 32, 32) == ("h264", 48, 48)
    assert reencode_plan(gpu, 33, 21) == ("h264", 48, 30)  # aspect kept, width up to 48
    codec, w, h = reencode_plan(gpu, 7680, 4320)
    assert codec == "h264" and w <= 4096 and (w + 15) // 16 * ((h + 15) // 16) <= 65536 and w % 2 == h % 2 == 0
    assert reencode_plan(decoder("cpu-dali"), 65, 37) == ("vp9", 64, 36)


def test_kinds_judge_a_folder_as_its_samples_one_by_one():
    gpu = decoder(DEFAULT_TARGET)
    samples = [_facts("vp9", w=640, h=360), _facts("vp9", w=128, h=96), _facts("mpeg4", w=2000, h=1200),
               _facts("mpeg4", w=1920, h=1080), _facts("hevc", "4:4:4", 10, w=320, h=240)]
    kinds: dict = {}
    for f in samples:
        add_kind(kinds, f)
    found = kinds_refusals(gpu, kinds)
    assert sorted((n, r.property) for n, r in found) == [(2, MACROBLOCKS), (2, TOO_SMALL)]
    # a kind is refused exactly when one of its samples is
    assert [refusal(gpu, f) is not None for f in samples] == [False, True, True, False, False]
    assert refusal(gpu, samples[2]).property == MACROBLOCKS  # MPEG-4: 9375 > 8192 macroblocks
    assert refusal(gpu, _facts("h264", w=4096, h=4097)).property == TOO_LARGE
    refused, caveat = folder_refusal({"streams": {"kinds": kinds}}, DEFAULT_TARGET)
    assert refused.startswith("4 samples are of stream kinds it does not take every sample of") and caveat is None
    assert folder_refusal({"streams": {"kinds": {}}}, DEFAULT_TARGET) == (None, None)


def test_video_caps_imports_nothing_but_the_standard_library():
    code = ("import sys; import video_caps.decoders; "
            "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split())
    assert not loaded & {"av", "numpy", "torch", "nvidia", "shard_tools", "dali_pipelines", "mvd"}
