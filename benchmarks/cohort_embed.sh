#!/usr/bin/env bash
# Cohort embed (issue 17): every scan of the shared data, once in this process (the plain
# loop, no --address) and once as one Ray task per scan (--address local), each into its own
# empty embedding cache (only the exported models are linked in). Prints the wall time of
# each run; the summary tables go to /tmp/cohort-embed-*.txt.
#
#   benchmarks/cohort_embed.sh [DATA_DIR] [RAY_THREADS...]
#
# DATA_DIR defaults to ../shared/data beside the project; each RAY_THREADS value (CPUs and
# model threads per Ray task: --threads) is one Ray run, default "1 2" (on 2 cores: two
# tasks at a time with 1 thread each, then one task at a time with 2 threads). The models
# come from $MODELS (default: the user cache's).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
if [ $# -gt 1 ]; then RAY_THREADS=("${@:2}"); else RAY_THREADS=(1 2); fi
MODELS="${MODELS:-$HOME/.cache/napari-medsam/models}"
PY="${PY:-.venv/bin/python}"
CSV=/tmp/cohort-embed.csv

DATA="$(cd "$DATA" && pwd)"
{
  echo image
  # every scan of the shared data (not the reference label maps)
  find "$DATA" -maxdepth 2 -type f \( -name 'image.nii.gz' -o -name 'image.nrrd' \
       -o -name '*_image.nii.gz' \) | sort
  find "$DATA" -mindepth 2 -maxdepth 2 -type d -name dicom | sort
} > "$CSV"
echo "$(($(wc -l < "$CSV") - 1)) scans listed in $CSV"

run() {  # run NAME CACHE [extra options...]
  local name="$1" cache="$2"; shift 2
  rm -rf "$cache"
  mkdir -p "$cache"
  ln -s "$MODELS" "$cache/models"
  local start end
  start=$(date +%s.%N)
  NAPARI_MEDSAM_CACHE="$cache" "$PY" -m napari_medsam.cli embed "$CSV" "$@" \
    > "/tmp/cohort-embed-$name.txt" 2> "/tmp/cohort-embed-$name.err" || true
  end=$(date +%s.%N)
  printf '%-28s %7.1f s   (%s)\n' "$name" "$(echo "$end - $start" | bc)" \
    "$(tail -n 1 "/tmp/cohort-embed-$name.txt")"
}

run loop /tmp/cohort-cacheA
for threads in "${RAY_THREADS[@]}"; do
  run "ray-local-threads$threads" "/tmp/cohort-cacheB$threads" --address local \
    --threads "$threads"
done
