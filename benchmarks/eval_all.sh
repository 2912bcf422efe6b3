#!/usr/bin/env bash
# Run `napari-medsam eval` on every case of the shared data in one mode, then print the tables
# of docs/speed_accuracy.md:
#
#     benchmarks/eval_all.sh MODE OUT_DIR [extra eval options]   # MODE: box, click, propagate
#
# Writes OUT_DIR/MODE_CASE.json per case (the names benchmarks/eval_tables.py reads);
# RESUME=1 skips the cases already written.
set -euo pipefail
MODE=$1
OUT=$2
shift 2
D=${NAPARI_MEDSAM_DATA:-../shared/data}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
run() {  # run CASE IMAGE LABELS (with RESUME=1 a case whose JSON exists is skipped)
    if [[ "${RESUME:-0}" == 1 && -s "$OUT/${MODE}_$1.json" ]]; then return; fi
    "$BIN/napari-medsam" eval "$2" "$3" --mode "$MODE" --device cpu ${EXTRA[@]+"${EXTRA[@]}"} \
        --json "$OUT/${MODE}_$1.json" > "$OUT/${MODE}_$1.log" 2>&1 \
        || echo "eval failed for $1 (see $OUT/${MODE}_$1.log)" >&2
}
EXTRA=("$@")

run dcmqi_liver_spine "$D/dcmqi_ct_3slice/dicom" "$D/dcmqi_ct_3slice/label_liver_spine.nrrd"
run dcmqi_heart "$D/dcmqi_ct_3slice/dicom" "$D/dcmqi_ct_3slice/label_heart.nrrd"
for n in 003 004; do
    run "hippocampus_$n" "$D/msd_hippocampus_mr/hippocampus_${n}_image.nii.gz" \
        "$D/msd_hippocampus_mr/hippocampus_${n}_label.nii.gz"
done
run pyradiomics_brain1_mr "$D/pyradiomics_brain1_mr/image.nrrd" "$D/pyradiomics_brain1_mr/label.nrrd"
for c in totalseg_mr_abdomen_sm totalseg_ct_abdomen_sm totalseg_ct_abdomen_pelvis; do
    run "$c" "$D/$c/image.nii.gz" "$D/$c/label.nii.gz"
done
run totalseg_ct_dicom "$D/totalseg_ct_dicom/dicom" "$D/totalseg_ct_dicom/label.nii.gz"
"$BIN/python" benchmarks/eval_tables.py "$OUT"
