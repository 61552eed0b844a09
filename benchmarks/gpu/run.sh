#!/usr/bin/env bash
# The GPU check, on a bare GPU machine (shared/GPU.md: torch, but no DALI, PyAV, webdataset or
# network). Run from anywhere; it works in the repository it belongs to. The pack
# (`python -m benchmarks.gpu.pack`, made where there is network) travels in batches, one device
# call each, back to back (the machine goes back when idle, and the received parts with it):
#
#   bash benchmarks/gpu/run.sh --receive .gpu-pack/batches/batch-N   # each call: copy in, check
#   bash benchmarks/gpu/run.sh                                        # then: everything below
#
# 1. prepare: every batch present; split files reassembled with cat; every file's sha256
#    checked (sha256sum --check against MANIFEST.json, any mismatch stops the run); the wheels
#    installed with pip --no-deps --no-index --target WORK/site, put on PYTHONPATH with the
#    repository itself (no install, no network); the shard tars unpacked into WORK.
# 2. the stages, each under its own time limit, all inside one budget (--budget, default 470 s):
#    env     nvidia-smi -q, pip list, versions, the NVDEC library (benchmarks.gpu.probe)
#    decode  each codec of the check set on NVDEC against the CPU path (benchmarks.gpu.decode_check)
#    pytest  python -m pytest -m cuda
#    step    mvd-bench step --device gpu (MVD-S and MVD-B, eager and compiled; WORK/bench/step)
#    loader  mvd-bench loader --device gpu (its shards travelled under WORK/bench/loader)
# (the step before the loader: its time is known, the loader sweep's is the rest of the budget)
# Everything lands in one folder: --out, else $OUT (the device tool sets it), else
# runs/gpu-check-<UTC date>: run.log, <stage>.log, env/, decode/, pytest/, loader/ and step/
# (report.json, report.md, plots), stages.jsonl, summary.json, summary.md, pack-manifest.json.
#
# Options:
#   --parts DIR      where the batches are gathered ($MVD_GPU_PARTS, default /tmp/mvd-gpu-parts)
#   --work DIR       site-packages, shards, scratch ($MVD_GPU_WORK, default /tmp/mvd-gpu-work)
#   --out DIR        the results folder
#   --stages LIST    comma-separated, run in this order (default env,decode,pytest,step,loader)
#   --budget S       seconds for prepare and all stages together
#   --prepare-only   stop after prepare (the CPU-side test runs this)
#   --receive DIR    only copy one batch into --parts and check its sha256s
# The Python used is $PYTHON (default python3).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
PARTS=${MVD_GPU_PARTS:-/tmp/mvd-gpu-parts}
WORK=${MVD_GPU_WORK:-/tmp/mvd-gpu-work}
OUT_DIR=${OUT:-}
STAGES=env,decode,pytest,step,loader
BUDGET=470
PREPARE_ONLY=0
RECEIVE=
# Each stage's own limit in seconds (the budget's remainder caps it further).
declare -A CAP=([env]=45 [decode]=60 [pytest]=150 [step]=220 [loader]=150)
ORDER=(env decode pytest step loader)

die() { echo "run.sh: $*" >&2; exit 2; }

while (($#)); do
  case $1 in
    --parts) PARTS=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --prepare-only) PREPARE_ONLY=1; shift ;;
    --receive) RECEIVE=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

manifest() { PYTHONPATH="$REPO" "$PY" -m benchmarks.gpu.manifest "$@"; }

if [[ -n $RECEIVE ]]; then
  manifest receive "$RECEIVE" "$PARTS"
  exit 0
fi

IFS=, read -r -a WANTED <<<"$STAGES"
for s in "${WANTED[@]}"; do
  [[ -n ${CAP[$s]:-} ]] || die "unknown stage $s; the stages are ${ORDER[*]}"
done
START=$SECONDS
DEADLINE=$((START + BUDGET))
OUT_DIR=${OUT_DIR:-$REPO/runs/gpu-check-$(date -u +%Y-%m-%d)}
mkdir -p "$OUT_DIR" "$WORK"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PARTS=$(mkdir -p "$PARTS" && cd "$PARTS" && pwd)
WORK=$(cd "$WORK" && pwd)
SITE=$WORK/site
STAGE_LOG=$OUT_DIR/stages.jsonl
: >"$STAGE_LOG"

log() { echo "[$(date -u +%H:%M:%S) +$((SECONDS - START))s] $*" | tee -a "$OUT_DIR/run.log"; }
json_str() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
record() {  # NAME STATUS RC SECONDS LIMIT COMMAND
  echo "{\"stage\": \"$1\", \"status\": \"$2\", \"rc\": $3, \"seconds\": $4, \"limit_s\": $5," \
    "\"command\": $(json_str "$6")}" >>"$STAGE_LOG"
}

prepare() {
  manifest status "$PARTS" ||
    die "not every batch is in $PARTS: send the missing ones with run.sh --receive BATCH_DIR"
  local plan name parts
  plan=$(manifest split-plan "$PARTS")
  while read -r name parts; do
    [[ -n $name ]] || continue
    # shellcheck disable=SC2086  # the manifest admits only word-safe names
    (cd "$PARTS" && cat $parts >"$name.tmp" && mv "$name.tmp" "$name")
    log "reassembled $name from $(wc -w <<<"$parts") parts with cat"
  done <<<"$plan"
  manifest sums "$PARTS" >"$PARTS/SHA256SUMS"
  if ! (cd "$PARTS" && sha256sum --check --strict --quiet SHA256SUMS) >"$PARTS/sha256.out" 2>&1; then
    tee -a "$OUT_DIR/run.log" <"$PARTS/sha256.out" >&2
    die "sha256 mismatch in $PARTS (the FAILED lines above): send the batch holding it again"
  fi
  log "sha256 of $(wc -l <"$PARTS/SHA256SUMS") files match MANIFEST.json"
  cp "$PARTS/MANIFEST.json" "$OUT_DIR/pack-manifest.json"

  local stamp wheels_txt
  stamp=$SITE/.installed-$(sha256sum "$PARTS/MANIFEST.json" | cut -c1-16)
  wheels_txt=$(manifest list "$PARTS" wheel)
  if [[ -e $stamp ]]; then
    log "wheels already installed in $SITE"
  elif [[ -n $wheels_txt ]]; then
    local -a wheels=() w
    for w in $wheels_txt; do wheels+=("$PARTS/$w"); done
    rm -rf "$SITE" && mkdir -p "$SITE"
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install --no-deps --no-index --no-compile --disable-pip-version-check \
        --quiet --target "$SITE" "${wheels[@]}" 2>&1 | tee -a "$OUT_DIR/run.log"
      [[ ${PIPESTATUS[0]} == 0 ]] || die "pip install --target $SITE failed (above)"
    else  # a wheel is a zip archive; without pip, unpacking it is the install
      log "no pip for $PY: unzipping the wheels into $SITE"
      for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$SITE"; done
    fi
    touch "$stamp"
    log "installed ${#wheels[@]} wheels into $SITE"
  fi
  local tars
  tars=$(manifest list "$PARTS" shards)
  for t in $tars; do
    tar -xf "$PARTS/$t" -C "$WORK"
    log "unpacked $t into $WORK"
  done
}

run_stage() {  # NAME COMMAND...
  local name=$1
  shift
  local left=$((DEADLINE - SECONDS))
  if ((left < 20)); then
    log "$name: skipped, ${left}s left of the ${BUDGET}s budget"
    record "$name" skipped 0 0 0 "$*"
    return 0
  fi
  local cap=${CAP[$name]} rc=0 t0=$SECONDS status=ok
  local limit=$((cap < left ? cap : left))
  log "$name: start, limit ${limit}s: $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1 || rc=$?
  if ((rc == 124 || rc == 137)); then status=timeout; elif ((rc != 0)); then status=failed; fi
  record "$name" "$status" "$rc" $((SECONDS - t0)) "$limit" "$*"
  log "$name: $status (rc $rc) in $((SECONDS - t0))s; last lines of $name.log:"
  tail -n 8 "$OUT_DIR/$name.log" | cut -c1-200 | sed "s/^/    [$name] /" | tee -a "$OUT_DIR/run.log"
}

log "GPU check: repo $REPO, parts $PARTS, work $WORK, out $OUT_DIR, budget ${BUDGET}s"
t0=$SECONDS
prepare
record prepare ok 0 $((SECONDS - t0)) "$BUDGET" "prepare"
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a stage cut short by its limit keeps its log
if ((PREPARE_ONLY)); then
  log "prepared (--prepare-only): PYTHONPATH=$PYTHONPATH"
  "$PY" -m benchmarks.gpu.summary "$OUT_DIR"
  exit 0
fi

cd "$REPO"
for stage in "${ORDER[@]}"; do
  [[ ",$STAGES," == *",$stage,"* ]] || continue
  case $stage in
    env)
      run_stage env "$PY" -m benchmarks.gpu.probe --out "$OUT_DIR/env" ;;
    decode)
      run_stage decode "$PY" -m benchmarks.gpu.decode_check --shards "$WORK/check" --out "$OUT_DIR/decode" ;;
    pytest)
      mkdir -p "$OUT_DIR/pytest"
      run_stage pytest "$PY" -m pytest -m cuda -q -rA -p no:cacheprovider -o timeout=100 \
        --junitxml "$OUT_DIR/pytest/junit.xml" ;;
    loader)
      run_stage loader "$PY" -m benchmarks loader --device gpu --out "$OUT_DIR/loader" --work "$WORK/bench" ;;
    step)
      run_stage step "$PY" -m benchmarks step --device gpu --out "$OUT_DIR/step" --work "$WORK/bench" ;;
  esac
done
log "done in $((SECONDS - START))s"
"$PY" -m benchmarks.gpu.summary "$OUT_DIR"
