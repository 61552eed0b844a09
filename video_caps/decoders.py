"""What each video decoder takes: the one owner of that knowledge.

A stream is described by :class:`StreamFacts` (found with PyAV at shard time by
``shard_tools.probe``, stored in each sample's json as ``"stream"``); a decoder by a
:class:`Decoder` of :data:`DECODERS`. :func:`refusal` says why a decoder cannot take a stream
(``None`` when it can), naming the property; :func:`reencode_plan` gives the codec and size a
stream is re-encoded into so that the decoder takes it. The manifest keeps the distinct stream
*kinds* (codec, chroma, bit depth, with their smallest and largest coded sizes:
:func:`add_kind`), enough to decide for a whole folder (:func:`kinds_refusals`) without reading a
sample.

Sources of the GPU entries (NVDEC, which DALI's mixed ``decoders.video`` drives):

- NVIDIA Video Codec SDK 12.x/13.0, *NVDEC Video Decoder API Programming Guide*, "Video Decoder
  Capabilities" table: per codec the chroma formats, bit depths, maximum and minimum size and
  maximum macroblock count (H.264 4096x4096 / 48x16 / 65536 MBs; HEVC 8192x8192 / 144x144 /
  262144; VP8 4096x4096 / 48x16 / 65536; VP9 8192x8192 / 128x128 / 262144; AV1 8192x8192 /
  128x128 / 262144; MPEG-4 2032x2032 / 48x16 / 8192; JPEG 32768x16384 / 64x64).
- NVIDIA Video Codec SDK 13.0, *NVDEC Application Note*, "NVDEC Hardware Capabilities" table:
  which GPU generation has which profile. Turing, GA100 (A100, A30) and Hopper share one column
  (no AV1); GA10x (the other Ampere chips) and Ada add AV1 Main; Blackwell adds H.264 High10 and
  High 4:2:2, HEVC 4:2:2 10/12-bit and H.264 up to 8192x8192.
- DALI's ``dali/operators/video/frames_decoder_gpu.cc``: before creating a decoder it asks
  ``cuvidGetDecoderCaps`` for (codec, chroma format, bit depth) and refuses a stream with
  "Codec configuration not supported on this GPU", "Video is too small in at least one dimension"
  (coded size below the minimum), "... too large ..." and "too many macroblocks"
  (coded width * height / 256 above the maximum). Those are the four checks of :func:`refusal`.
- DALI 2.4 documentation of ``fn.decoders.video`` / ``fn.readers.video``: the CPU backend
  decodes VP8, VP9 and MJPEG only (checked on this project's CPU machines).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# the property a refusal names (the summary counts re-encodes and rejections by it)
CODEC = "codec"
FORMAT = "chroma/bit depth"
TOO_SMALL = "too small"
TOO_LARGE = "too large"
MACROBLOCKS = "macroblocks"

CODEC_NAMES = {"h264": "H.264", "hevc": "HEVC", "vp8": "VP8", "vp9": "VP9", "av1": "AV1", "mpeg4": "MPEG-4",
               "mjpeg": "MJPEG"}


@dataclass(frozen=True)
class StreamFacts:
    """What decoding a stream found (sizes in pixels; ``coded_*`` as the decoder allocates them,
    e.g. H.264 rounded up to whole 16x16 macroblocks)."""

    codec: str  # FFmpeg's canonical codec name: h264, hevc, vp9, av1, ...
    profile: str | None
    pix_fmt: str
    chroma: str  # "4:2:0", "4:2:2", "4:4:4", "4:0:0", "4:1:1", "4:4:0", "rgb", "other"
    bit_depth: int
    coded_width: int
    coded_height: int
    width: int  # display size (what the frames decode to)
    height: int
    fps: float
    num_frames: int
    max_keyframe_interval: int  # largest distance in frames between key frames (to the end, too)
    b_frames: bool
    vfr: bool  # frame durations differ

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StreamFacts:
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f"stream facts lack {missing}")
        return cls(**{k: data[k] for k in names})


@dataclass(frozen=True)
class CodecCaps:
    """What one decoder takes of one codec. ``formats`` None: any chroma and bit depth."""

    formats: frozenset[tuple[str, int]] | None
    min_size: tuple[int, int] = (1, 1)  # coded width, height
    max_size: tuple[int, int] | None = None
    max_macroblocks: int | None = None  # coded width * height / 256 (DALI's count)

    def formats_text(self) -> str:
        by_chroma: dict[str, list[int]] = {}
        for chroma, depth in sorted(self.formats or ()):
            by_chroma.setdefault(chroma, []).append(depth)
        return ", ".join(f"{'/'.join(str(d) for d in depths)}-bit {chroma}" for chroma, depths in by_chroma.items())


@dataclass(frozen=True)
class Decoder:
    """A decoder the shards can be made for. ``codecs`` None: any codec FFmpeg decodes."""

    name: str  # the --target value
    label: str  # for messages: "NVDEC on Ampere/Hopper"
    codecs: dict[str, CodecCaps] | None
    reencode_codec: str  # the codec a stream it does not take is re-encoded into

    def takes_codec(self, codec: str) -> bool:
        return self.codecs is None or codec in self.codecs


def _formats(*pairs: tuple[str, int]) -> frozenset[tuple[str, int]]:
    return frozenset(pairs)


# NVDEC per codec on Turing / GA100 / Hopper (programming guide table + application note column)
_H264 = CodecCaps(_formats(("4:2:0", 8)), (48, 16), (4096, 4096), 65536)
_HEVC = CodecCaps(_formats(*((c, d) for c in ("4:2:0", "4:4:4") for d in (8, 10, 12))), (144, 144), (8192, 8192),
                  262144)
_VP8 = CodecCaps(_formats(("4:2:0", 8)), (48, 16), (4096, 4096), 65536)
_VP9 = CodecCaps(_formats(("4:2:0", 8), ("4:2:0", 10), ("4:2:0", 12)), (128, 128), (8192, 8192), 262144)
_AV1 = CodecCaps(_formats(("4:2:0", 8), ("4:2:0", 10), ("4:0:0", 8), ("4:0:0", 10)), (128, 128), (8192, 8192),
                 262144)
_MPEG4 = CodecCaps(_formats(("4:2:0", 8)), (48, 16), (2032, 2032), 8192)
_JPEG = CodecCaps(_formats(*((c, 8) for c in ("4:0:0", "4:2:0", "4:2:2", "4:4:4"))), (64, 64), (32768, 16384),
                  67108864)
_NVDEC_GA100_HOPPER = {"h264": _H264, "hevc": _HEVC, "vp8": _VP8, "vp9": _VP9, "mpeg4": _MPEG4, "mjpeg": _JPEG}
# GA10x and Ada: AV1 Main as well
_NVDEC_ADA = {**_NVDEC_GA100_HOPPER, "av1": _AV1}
# Blackwell: H.264 High10 / High 4:2:2 up to 8192x8192, HEVC 4:2:2 10/12-bit
_NVDEC_BLACKWELL = {
    **_NVDEC_ADA,
    "h264": CodecCaps(_formats(("4:2:0", 8), ("4:2:0", 10), ("4:2:2", 8), ("4:2:2", 10)), (48, 16), (8192, 8192),
                      262144),
    "hevc": CodecCaps(_HEVC.formats | _formats(("4:2:2", 10), ("4:2:2", 12)), (144, 144), (8192, 8192), 262144),
}


_ANY = CodecCaps(None)
DECODERS: dict[str, Decoder] = {d.name: d for d in (
    # A100 (GA100) and Hopper share one column of NVIDIA's table: their common set is that column
    Decoder("gpu-ampere-hopper", "NVDEC on Ampere/Hopper", dict(sorted(_NVDEC_GA100_HOPPER.items())), "h264"),
    Decoder("gpu-ampere", "NVDEC on Ampere GA100 (A100, A30)", _NVDEC_GA100_HOPPER, "h264"),
    Decoder("gpu-ampere-ga10x", "NVDEC on Ampere GA10x (A10, A40, RTX 30)", _NVDEC_ADA, "h264"),
    Decoder("gpu-hopper", "NVDEC on Hopper", _NVDEC_GA100_HOPPER, "h264"),
    Decoder("gpu-ada", "NVDEC on Ada", _NVDEC_ADA, "h264"),
    Decoder("gpu-blackwell", "NVDEC on Blackwell", _NVDEC_BLACKWELL, "h264"),
    Decoder("cpu-dali", "DALI's CPU decoder", {"vp8": _ANY, "vp9": _ANY, "mjpeg": _ANY}, "vp9"),
    Decoder("pyav", "PyAV (FFmpeg)", None, "h264"),
)}
DEFAULT_TARGET = "gpu-ampere-hopper"


def decoder(name: str) -> Decoder:
    try:
        return DECODERS[name]
    except KeyError:
        raise ValueError(f"unknown decoder target {name!r}; choose one of {sorted(DECODERS)}") from None


def gpu_target(capability: tuple[int, int]) -> str:
    """The target of a GPU by its CUDA compute capability (the default set when unknown)."""
    major, minor = capability
    if major >= 10:
        return "gpu-blackwell"
    return {(8, 0): "gpu-ampere", (8, 6): "gpu-ampere-ga10x", (8, 7): "gpu-ampere-ga10x", (8, 9): "gpu-ada",
            (9, 0): "gpu-hopper"}.get((major, minor), DEFAULT_TARGET)


def _name(codec: str) -> str:
    return CODEC_NAMES.get(codec, codec)


@dataclass(frozen=True)
class Refusal:
    """Why a decoder cannot take a stream: the property (:data:`CODEC` ...) and a sentence."""

    property: str
    text: str


def _refuse(dec: Decoder, codec: str, chroma: str, bit_depth: int, coded: tuple[int, int],
            macroblocks: int, what: str) -> Refusal | None:
    if not dec.takes_codec(codec):
        return Refusal(CODEC, f"{what}: {dec.label} does not decode {_name(codec)} "
                              f"(it decodes {', '.join(_name(c) for c in sorted(dec.codecs))})")
    caps = dec.codecs[codec] if dec.codecs is not None else _ANY
    if caps.formats is not None and (chroma, bit_depth) not in caps.formats:
        return Refusal(FORMAT, f"{what}: {dec.label} decodes {_name(codec)} as {caps.formats_text()} only")
    if coded[0] < caps.min_size[0] or coded[1] < caps.min_size[1]:
        return Refusal(TOO_SMALL, f"{what}: {dec.label} decodes {_name(codec)} from "
                                  f"{caps.min_size[0]}x{caps.min_size[1]} (coded size)")
    if caps.max_size is not None and (coded[0] > caps.max_size[0] or coded[1] > caps.max_size[1]):
        return Refusal(TOO_LARGE, f"{what}: {dec.label} decodes {_name(codec)} up to "
                                  f"{caps.max_size[0]}x{caps.max_size[1]} (coded size)")
    if caps.max_macroblocks is not None and macroblocks > caps.max_macroblocks:
        return Refusal(MACROBLOCKS, f"{what}: {dec.label} decodes {_name(codec)} up to {caps.max_macroblocks} "
                                    f"macroblocks (coded width x height / 256), this has {macroblocks}")
    return None


def describe(facts: StreamFacts) -> str:
    """``H.264 High 4:4:4 Predictive (yuv444p) 64x48``: how messages name a stream."""
    profile = f" {facts.profile}" if facts.profile else ""
    coded = (f", coded {facts.coded_width}x{facts.coded_height}"
             if (facts.coded_width, facts.coded_height) != (facts.width, facts.height) else "")
    return f"{_name(facts.codec)}{profile} ({facts.pix_fmt}) {facts.width}x{facts.height}{coded}"


def refusal(dec: Decoder, facts: StreamFacts) -> Refusal | None:
    """Why ``dec`` cannot take the stream (None: it can), checked as DALI's GPU decoder does."""
    coded = (max(facts.coded_width, facts.width), max(facts.coded_height, facts.height))
    return _refuse(dec, facts.codec, facts.chroma, facts.bit_depth, coded, coded[0] * coded[1] // 256,
                   describe(facts))


# -- stream kinds: the manifest's summary a folder is judged on ---------------------------------


def kind_key(facts: StreamFacts) -> str:
    return f"{facts.codec} {facts.chroma} {facts.bit_depth}"


def add_kind(kinds: dict[str, dict], facts: StreamFacts) -> None:
    """Count ``facts`` into ``kinds`` (kind key -> {codec, chroma, bit_depth, samples, min_coded,
    max_coded, max_macroblocks, pix_fmts})."""
    coded = [max(facts.coded_width, facts.width), max(facts.coded_height, facts.height)]
    one = {"codec": facts.codec, "chroma": facts.chroma, "bit_depth": facts.bit_depth, "samples": 1,
           "min_coded": coded, "max_coded": coded, "max_macroblocks": coded[0] * coded[1] // 256,
           "pix_fmts": [facts.pix_fmt]}
    merge_kinds(kinds, {kind_key(facts): one})


def merge_kinds(kinds: dict[str, dict], more: dict[str, dict]) -> None:
    """Add the kinds ``more`` into ``kinds`` (counts add, sizes widen)."""
    for key, k in more.items():
        have = kinds.get(key)
        if have is None:
            kinds[key] = {**k, "min_coded": list(k["min_coded"]), "max_coded": list(k["max_coded"]),
                          "pix_fmts": sorted(k["pix_fmts"])}
            continue
        have["samples"] += k["samples"]
        have["min_coded"] = [min(a, b) for a, b in zip(have["min_coded"], k["min_coded"])]
        have["max_coded"] = [max(a, b) for a, b in zip(have["max_coded"], k["max_coded"])]
        have["max_macroblocks"] = max(have["max_macroblocks"], k["max_macroblocks"])
        have["pix_fmts"] = sorted(set(have["pix_fmts"]) | set(k["pix_fmts"]))


def kinds_refusals(dec: Decoder, kinds: dict[str, dict]) -> list[tuple[int, Refusal]]:
    """(the kind's samples, refusal) of every kind some of whose samples ``dec`` cannot take.

    Exact for the four checks: a kind passes iff its smallest coded width and height reach the
    minimum, its largest stay within the maximum and its largest macroblock count within the limit.
    """
    out = []
    for k in kinds.values():
        what = f"{_name(k['codec'])} {k['chroma']} {k['bit_depth']}-bit ({', '.join(k['pix_fmts'])})"
        for coded, label in ((k["min_coded"], "smallest"), (k["max_coded"], "largest")):
            found = _refuse(dec, k["codec"], k["chroma"], k["bit_depth"], tuple(coded),
                            k["max_macroblocks"] if label == "largest" else 0,
                            f"{what}, {label} {coded[0]}x{coded[1]}")
            if found is not None:
                out.append((k["samples"], found))
                break
    return out


# -- re-encoding into what a decoder takes ------------------------------------------------------


def _even(x: float) -> int:
    return max(2, int(round(x)) // 2 * 2)


def reencode_plan(dec: Decoder, width: int, height: int) -> tuple[str, int, int]:
    """(codec, width, height) to re-encode a ``width`` x ``height`` stream into for ``dec``: 8-bit
    4:2:0 in ``dec.reencode_codec``, even sizes, the aspect kept, scaled up to the codec's
    minimum or down within its maximum and macroblock count where needed."""
    codec = dec.reencode_codec
    caps = dec.codecs.get(codec, _ANY) if dec.codecs is not None else _ANY
    w, h = float(width), float(height)
    up = max(caps.min_size[0] / w, caps.min_size[1] / h, 1.0)
    w, h = w * up, h * up
    if caps.max_size is not None:
        down = min(caps.max_size[0] / w, caps.max_size[1] / h, 1.0)
        w, h = w * down, h * down
    if caps.max_macroblocks is not None:
        # H.264 codes whole 16x16 macroblocks: keep a margin for the rounding up
        mbs = (w + 16) * (h + 16) / 256
        if mbs > caps.max_macroblocks:
            s = (caps.max_macroblocks / mbs) ** 0.5
            w, h = w * s, h * s
    out_w, out_h = _even(w), _even(h)
    # rounding to even must not drop below the minimum
    out_w += 2 * max(0, -(-(caps.min_size[0] - out_w) // 2))
    out_h += 2 * max(0, -(-(caps.min_size[1] - out_h) // 2))
    return codec, out_w, out_h


def folder_refusal(manifest: dict, target: str) -> tuple[str | None, str | None]:
    """(why ``target`` cannot read every sample of the folder, a caveat), from its manifest alone.

    A folder made with recorded stream facts is judged exactly (its ``streams.kinds``); an older
    one by its codecs only, with the caveat that chroma, bit depth and sizes went unchecked.
    """
    dec = decoder(target)
    kinds = manifest.get("streams", {}).get("kinds")
    if kinds is None:
        codecs = sorted(c for c, n in manifest.get("codecs", {}).items() if n and not dec.takes_codec(c))
        caveat = (f"the folder predates recorded stream facts: only its codecs were checked against {dec.label}, "
                  f"not chroma, bit depth or size; `mvd-shard verify DIR --target {target}` probes every sample")
        if codecs:
            n = sum(manifest["codecs"][c] for c in codecs)
            return f"{n} samples in codecs {codecs} that {dec.label} does not decode", caveat
        return None, caveat
    found = kinds_refusals(dec, kinds)
    if not found:
        return None, None
    n = sum(count for count, _ in found)
    return (f"{n} samples are of stream kinds it does not take every sample of ("
            + "; ".join(f"{count} samples: {r.text}" for count, r in found) + ")"), None
