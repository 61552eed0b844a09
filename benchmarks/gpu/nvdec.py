"""NVDEC on this GPU, asked through the driver's own library (libnvcuvid), for each stream of
the check set: `cuvidGetDecoderCaps` for the stream's codec, chroma format and bit depth gives
whether NVDEC decodes it, how many NVDEC engines can (`nNumNVDECs`: the engine count), and the
size range, checked against the stream's size. This is the check DALI's mixed decoder makes per
stream (DALI 2.4, dali/operators/video/frames_decoder_gpu.cc) before it fails with "Codec
configuration not supported on this GPU" or "Video is too small".

    python -m benchmarks.gpu.nvdec --shards /tmp/mvd-gpu/shards/check --out OUT/nvdec

Writes OUT/nvdec.json: {"engines": N, "streams": {codec: {...caps, "fits": bool}}}; exits 1
when a stream of the check set would be refused. The check set's streams are the synthetic
clips shard_tools.synth encodes: 4:2:0, 8-bit (their pixel format, yuv420p).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

import torch

from benchmarks.gpu.probe import NVDEC_LIBRARY
from dali_pipelines import load_shard_dir

# cudaVideoCodec and cudaVideoChromaFormat (the Video Codec SDK's cuviddec.h)
CODECS = {"mpeg4": 2, "h264": 4, "hevc": 8, "vp8": 9, "vp9": 10, "av1": 11}
CHROMA = {"4:0:0": 0, "4:2:0": 1, "4:2:2": 2, "4:4:4": 3}
SYNTH_CHROMA, SYNTH_BIT_DEPTH = "4:2:0", 8  # shard_tools.synth encodes yuv420p


class DecodeCaps(ctypes.Structure):
    """CUVIDDECODECAPS (cuviddec.h): IN codec, chroma, bit depth; OUT the rest."""

    _fields_ = [("eCodecType", ctypes.c_int), ("eChromaFormat", ctypes.c_int),
                ("nBitDepthMinus8", ctypes.c_uint), ("reserved1", ctypes.c_uint * 3),
                ("bIsSupported", ctypes.c_ubyte), ("nNumNVDECs", ctypes.c_ubyte),
                ("nOutputFormatMask", ctypes.c_ushort), ("nMaxWidth", ctypes.c_uint),
                ("nMaxHeight", ctypes.c_uint), ("nMaxMBCount", ctypes.c_uint),
                ("nMinWidth", ctypes.c_ushort), ("nMinHeight", ctypes.c_ushort),
                ("bIsHistogramSupported", ctypes.c_ubyte), ("nCounterBitDepth", ctypes.c_ubyte),
                ("nMaxHistogramBins", ctypes.c_ushort), ("reserved3", ctypes.c_uint * 10)]


def decoder_caps(cuvid, codec: str, chroma: str, bit_depth: int) -> dict:
    caps = DecodeCaps(eCodecType=CODECS[codec], eChromaFormat=CHROMA[chroma],
                      nBitDepthMinus8=bit_depth - 8)
    status = cuvid.cuvidGetDecoderCaps(ctypes.byref(caps))
    if status != 0:
        return {"error": f"cuvidGetDecoderCaps returned CUresult {status}"}
    return {"supported": bool(caps.bIsSupported), "engines": int(caps.nNumNVDECs),
            "min": [caps.nMinWidth, caps.nMinHeight], "max": [caps.nMaxWidth, caps.nMaxHeight],
            "max_macroblocks": caps.nMaxMBCount}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.nvdec",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, required=True, help="one shard dir per codec")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.zeros(1, device="cuda")  # the primary context, current on this thread for libnvcuvid
    cuvid = ctypes.CDLL(NVDEC_LIBRARY)
    result = {"device": torch.cuda.get_device_name(), "streams": {}}
    for data_dir in sorted(p.parent for p in args.shards.glob("*/manifest.json")):
        table = load_shard_dir(data_dir).table
        codec = data_dir.name
        caps = decoder_caps(cuvid, codec, SYNTH_CHROMA, SYNTH_BIT_DEPTH)
        size = [int(table.width.min()), int(table.height.min()), int(table.width.max()),
                int(table.height.max())]
        caps.update(codec=codec, chroma=SYNTH_CHROMA, bit_depth=SYNTH_BIT_DEPTH,
                    sizes_min_max=size)
        if "error" not in caps:
            caps["fits"] = caps["supported"] and size[0] >= caps["min"][0] and \
                size[1] >= caps["min"][1] and size[2] <= caps["max"][0] and \
                size[3] <= caps["max"][1]
        result["streams"][codec] = caps
        print(f"[nvdec] {codec}: {json.dumps(caps)}", flush=True)
    engines = {c["engines"] for c in result["streams"].values() if "engines" in c}
    result["engines"] = max(engines) if engines else None
    (args.out / "nvdec.json").write_text(json.dumps(result, indent=1) + "\n")
    if not result["streams"]:
        print(f"nvdec: no shard directory under {args.shards}", file=sys.stderr)
        return 1
    return 0 if all(c.get("fits") for c in result["streams"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
