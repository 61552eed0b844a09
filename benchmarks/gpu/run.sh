#!/usr/bin/env bash
# The GPU check, one device call at a time (the calls, their commands, carried sizes and times:
# benchmarks/gpu/PLAN.md, rendered from benchmarks/gpu/plan.py). Run from the repository root.
#
#   bash benchmarks/gpu/run.sh --call torch                                    # call 1
#   bash benchmarks/gpu/run.sh --call dali-1 --part .gpu-pack/dali-part-1       # call 2
#   bash benchmarks/gpu/run.sh --call dali-2 --part .gpu-pack/dali-part-2       # at once
#   bash benchmarks/gpu/run.sh --call dali-3 --part .gpu-pack/dali-part-3 --install  # at once
#   bash benchmarks/gpu/run.sh --rehearse [--out DIR]           # call 1 on a CPU machine
#
# Call 1 needs nothing carried. Each DALI call receives one part of the pack
# (python -m benchmarks.gpu.pack) into /tmp/mvd-gpu/parts, outside the repository, checking its
# sha256; the last (--install) then checks that every part is there, reassembles the slimmed
# DALI wheel with cat, checks its sha256, unpacks it with xz, installs it and the small wheels
# with pip --no-deps --no-index --target /tmp/mvd-gpu/site, unpacks the shards, and runs its
# stages. Then benchmarks.gpu.check runs the call's stages and leaves four files in the results
# folder: summary.md, summary.json, run.log and gpu-check-<call>.tar.gz.
#
# Options:
#   --call NAME   torch (default) or dali-N (benchmarks/gpu/PLAN.md lists them)
#   --part DIR    the carried part (dali-N)
#   --install     after receiving: reassemble, check, install (the last DALI call)
#   --machine DIR where received parts, the install and the shards live (default /tmp/mvd-gpu)
#   --out DIR     the results folder (default: $OUT, else runs/gpu-check-<UTC date>-<call>)
#   --work DIR    the stages' scratch, tarred into the results (default /tmp/mvd-gpu/work/...)
#   --budget S    seconds for the whole call (default: the plan's)
#   --rehearse    call 1 with DALI, PyAV and webdataset unimportable (a CPU machine)
# The Python used is $PYTHON (default python3).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
MACHINE=/tmp/mvd-gpu
CALL=torch
PART=
OUT_DIR=${OUT:-}
WORK=
BUDGET=
REHEARSE=0
INSTALL=0

die() { echo "run.sh: $*" >&2; exit 2; }

while (($#)); do
  case $1 in
    --call) CALL=$2; shift 2 ;;
    --part) PART=$2; shift 2 ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --rehearse) REHEARSE=1; shift ;;
    --install) INSTALL=1; shift ;;
    --machine) MACHINE=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case $CALL in torch | dali-[1-9]) ;; *) die "unknown call $CALL: torch or dali-N" ;; esac
((REHEARSE)) && [[ $CALL != torch ]] && die "--rehearse runs call 1 (torch) only"
[[ $CALL != torch && -z $PART ]] && die "--call $CALL needs --part DIR (the carried part)"

cd "$REPO" || die "no repository at $REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR=${OUT_DIR:-$REPO/runs/gpu-check-$(date -u +%Y-%m-%d)-$CALL}
mkdir -p "$OUT_DIR" || die "cannot make $OUT_DIR"
mkdir -p "$MACHINE" && MACHINE=$(cd "$MACHINE" && pwd)
ARGS=(--call "$CALL" --out "$OUT_DIR" --machine "$MACHINE")
[[ -n $WORK ]] && ARGS+=(--work "$WORK")
[[ -n $BUDGET ]] && ARGS+=(--budget "$BUDGET")
((REHEARSE)) && ARGS+=(--rehearse)

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT_DIR/run.log"; }
# step NAME COMMAND...: a setup step, recorded for the summary as NAME=ran|failed:SECONDS
step() {
  local name=$1 t0=$SECONDS rc=0
  shift
  log "$name: $*"
  "$@" >>"$OUT_DIR/run.log" 2>&1 || rc=$?
  if ((rc)); then
    log "$name: FAILED (rc $rc): the last lines of run.log say why"
    ARGS+=(--setup "$name=failed:$((SECONDS - t0))")
    return 1
  fi
  ARGS+=(--setup "$name=ran:$((SECONDS - t0))")
}

manifest() { "$PY" -m benchmarks.gpu.manifest "$@"; }

install_pack() {  # call 3: reassemble, check, unpack, install (everything under $MACHINE)
  local parts=$MACHINE/parts site=$MACHINE/site name pieces
  manifest status "$parts" || {
    echo "a part is missing in $parts: the machine was given back since it came (idle for" \
      "30 s). Run the DALI calls again from the first, back to back." >&2
    return 1
  }
  while read -r name pieces; do
    [[ -n $name ]] || continue
    # shellcheck disable=SC2086  # the manifest admits only word-safe names
    (cd "$parts" && cat $pieces >"$name.tmp" && mv "$name.tmp" "$name") || return 1
  done < <(manifest split-plan "$parts")
  manifest sums "$parts" >"$parts/SHA256SUMS" || return 1
  (cd "$parts" && sha256sum --check --strict --quiet SHA256SUMS) || {
    echo "sha256 mismatch in $parts (the FAILED lines above): carry that part again" >&2
    return 1
  }
  local -a wheels=()
  for name in $(manifest list "$parts" wheel-xz); do
    xz -d -k -f -T0 "$parts/$name" || return 1
    wheels+=("$parts/${name%.xz}")
  done
  for name in $(manifest list "$parts" wheel); do wheels+=("$parts/$name"); done
  rm -rf "$site" && mkdir -p "$site"
  "$PY" -m pip install --no-deps --no-index --no-compile --disable-pip-version-check --quiet \
    --target "$site" "${wheels[@]}" || return 1
  # DALI's wheel has no nvidia/__init__.py; a regular `nvidia` package elsewhere on the path
  # (some NVIDIA wheels ship one) would hide nvidia/dali. Make this one a regular package, first
  # on PYTHONPATH, whose path spans every `nvidia` folder on sys.path.
  [[ -e $site/nvidia/__init__.py ]] ||
    printf '%s\n' '"""nvidia: DALI (here) and the nvidia folders elsewhere on sys.path."""' \
      'from pkgutil import extend_path' '__path__ = extend_path(__path__, __name__)' \
      >"$site/nvidia/__init__.py"
  for name in $(manifest list "$parts" shards); do
    mkdir -p "$MACHINE/shards" && tar -xf "$parts/$name" -C "$MACHINE/shards" || return 1
  done
}

log "run.sh --call $CALL$( ((REHEARSE)) && echo ' --rehearse') in $REPO, results in $OUT_DIR"
if [[ $CALL != torch ]]; then
  step receive manifest receive "$PART" "$MACHINE/parts" && ((INSTALL)) && step install install_pack
fi
exec "$PY" -m benchmarks.gpu.check "${ARGS[@]}"
