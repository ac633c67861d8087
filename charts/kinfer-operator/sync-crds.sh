#!/usr/bin/env bash
# Keeps the chart's copy of the CRDs (files/crds/) identical to the generated ones in the
# repository's crds/ (written by `make crds` from crates/api).
#
#   sync-crds.sh          copy crds/*.yaml into files/crds/ (and remove stale copies)
#   sync-crds.sh --check  exit 1, with a diff, when they differ (CI / make test-chart)
#
# The copy is byte-for-byte: templates/crds.yaml reads these files and adds the chart's labels
# and the keep policy, so nothing is hand-edited here.
set -euo pipefail
CHART="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="${KINFER_CRDS_DIR:-$CHART/../../crds}"
DST="$CHART/files/crds"

[[ -d "$SRC" ]] || { echo "sync-crds: no CRD directory at $SRC" >&2; exit 2; }
shopt -s nullglob
src_files=("$SRC"/*.yaml)
(( ${#src_files[@]} > 0 )) || { echo "sync-crds: $SRC holds no *.yaml" >&2; exit 2; }

case "${1:-}" in
  --check)
    if diff -ru --exclude='.*' "$SRC" "$DST"; then
      echo "sync-crds: charts/kinfer-operator/files/crds matches crds/ (${#src_files[@]} files)"
    else
      echo "sync-crds: the chart's CRDs differ from crds/; run charts/kinfer-operator/sync-crds.sh" >&2
      exit 1
    fi
    ;;
  "")
    mkdir -p "$DST"
    for f in "$DST"/*.yaml; do [[ -e "$SRC/$(basename "$f")" ]] || rm -v "$f"; done
    for f in "${src_files[@]}"; do cp "$f" "$DST/"; done
    echo "sync-crds: copied ${#src_files[@]} CRDs into $DST"
    ;;
  *) echo "usage: sync-crds.sh [--check]" >&2; exit 2 ;;
esac
