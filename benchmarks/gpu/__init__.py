"""The GPU check: everything one run on a bare GPU machine needs, prepared here.

The machine (as the project describes the GPU machine) has torch but no DALI, PyAV, webdataset or network, takes files in
batches of at most 64 MiB and a command of at most 10 minutes. So:

- `pack` (here, once): the wheels it lacks and small synthetic shard sets, files above 50 MiB
  split into parts, everything grouped into batches, all recorded in MANIFEST.json
  (`manifest` owns that format; it needs only the standard library, so it runs there first);
- `run.sh` (there): receive the batches one call at a time, reassemble with `cat`, check every
  sha256, install the wheels into a folder on PYTHONPATH, then the timed stages: `probe`
  (versions, NVDEC library), `decode_check` (each codec through NVDEC against the CPU path),
  `pytest -m cuda`, `mvd-bench step --device gpu`, `mvd-bench loader --device gpu`.
"""
