"""`mvd-bench storage`: the pretrain loader reading the same shards from an S3-compatible server
and from the local disk, side by side in one run.

The server is moto's standalone S3 server, started by this mode on 127.0.0.1 (the `moto[server]`
dev extra), with the standard AWS environment pointed at it: the loader reads it through
`dali_pipelines.storage` exactly as it would read MinIO, Ceph or AWS S3 (one ranged GET per
sample). The shards are the loader benchmark's reference set (VP9, 320x240, 80 frames, GOP 16,
48 videos; `benchmarks.loader.FULL_CPU`), the clip its reference clip (16x4 at 224, teacher view
224, batch 8). Disk and S3 are timed in interleaved rounds, for the uint8 clips mvd-train asks for
and the float32 default; medians are reported with the ratio `s3_over_disk` (target >= 0.9).

A local server measures what the storage layer adds (request handling, the HTTP stack, the
copies), not a network: a remote store adds its latency and bandwidth.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from statistics import median

from benchmarks.loader import FULL_CPU, QUICK, clips_per_s, synth_shards

BUCKET = "mvd-bench"
TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@contextlib.contextmanager
def local_s3_server(log_path: Path, server_env: dict | None = None):
    """moto's S3 server on a free 127.0.0.1 port, the AWS environment pointed at it (this process
    and every process it starts) for the duration, then restored; yields the endpoint URL.
    ``server_env``: extra environment of the server (e.g. moto's INITIAL_NO_AUTH_ACTION_COUNT=0,
    which makes it check credentials). The tests' S3 server is this one too."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    env = {**TEST_ENV, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(server_env or {})})
        os.environ.update(env)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto server did not start on {endpoint} (log: {log_path})") from None
                    time.sleep(0.05)
            yield endpoint
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def upload(folder: Path, url: str) -> str:
    """Copy the files of `folder` to the s3:// prefix `url` (its bucket made if absent)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    key = url.split("://", 1)[1].rstrip("/")
    bucket = key.split("/", 1)[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for f in sorted(Path(folder).iterdir()):
        if f.is_file():
            fs.put_file(str(f), f"{key}/{f.name}")
    return url


def run(out_dir: Path, *, quick: bool = False) -> list[dict]:
    from dali_pipelines import PretrainLoader

    s = QUICK if quick else FULL_CPU
    out_dir = Path(out_dir)
    data_dir = synth_shards(out_dir / "shards", s, "vp9")
    common = dict(num_frames=s.clip_frames, sampling_rate=s.sampling_rate, input_size=s.input_size,
                  teacher_input_size=s.teacher_sizes[0])
    where = dict(codec="vp9", video=f"{s.width}x{s.height}x{s.num_frames}",
                 clip=f"{s.clip_frames}x{s.sampling_rate}@{s.input_size}", batch_size=s.batch_size,
                 device="cpu", server="moto (local, 127.0.0.1)")
    records = []
    with local_s3_server(out_dir / "moto.log"):
        url = upload(data_dir, f"s3://{BUCKET}/{data_dir.name}")
        sources = {"disk": str(data_dir), "s3": url}
        for output in ("uint8", "float32"):
            makers = {name: partial(PretrainLoader, src, s.batch_size, device="cpu",
                                    normalize=output == "float32", **common) for name, src in sources.items()}
            rates = {name: [] for name in makers}
            cpu = {name: [] for name in makers}
            for _ in range(s.rounds):  # interleaved: both see the same machine load
                for name, make in makers.items():
                    rate, ms = clips_per_s(make, s.batches)
                    rates[name].append(rate)
                    cpu[name].append(ms)
            rate = {name: median(v) for name, v in rates.items()}
            for name in makers:
                tag = dict(where, source=name, output=output)
                records.append({"name": "pretrain_clips_per_s", "value": rate[name], "unit": "clips/s", **tag})
                records.append({"name": "pretrain_cpu_ms_per_clip", "value": median(cpu[name]), "unit": "ms",
                                **tag, "note": "this process and its workers (not the server's)"})
            records.append({"name": "s3_over_disk", "value": rate["s3"] / rate["disk"], "unit": "x",
                            **where, "output": output, "note": "S3 clips/s over disk clips/s, same run"})
    return records
