#!/usr/bin/env bash
# Local images, built without any registry or image builder:
#   images.sh build   -> ~/.cache/kinfer/bin/images-<hash>/{pause.tar,testapp.tar,mkimage}
#   images.sh load    -> import them into the running cluster's containerd (namespace k8s.io)
#   images.sh import FILE.tar...  -> import other docker/OCI archives (e.g. the project's images)
# Image names: kinfer.local/pause:3.10 (containerd's sandbox image), kinfer.local/testapp:v1.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

PAUSE_IMAGE=kinfer.local/pause:3.10
TESTAPP_IMAGE=kinfer.local/testapp:v1

images_dir() {
  local h
  h="$( (cd "$HERE/go/images" && find . -type f | LC_ALL=C sort | xargs sha256sum; go env GOVERSION) | sha256sum | cut -c1-12)"
  echo "$KINFER_BIN_ROOT/images-$h"
}

build() {
  local d; d="$(images_dir)"
  if [[ -f "$d/pause.tar" && -f "$d/testapp.tar" && -x "$d/mkimage" ]]; then
    log "images: cached in $d"; echo "$d"; return
  fi
  log "images: building pause, testapp, mkimage"
  local tmp="$d.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp/bin"
  (cd "$HERE/go/images" && CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags '-s -w' -o "$tmp/bin/" ./pause ./testapp ./mkimage)
  mv "$tmp/bin/mkimage" "$tmp/mkimage"
  "$tmp/mkimage" -o "$tmp/pause.tar" -tag "$PAUSE_IMAGE" -add "$tmp/bin/pause:/pause:0755" -entrypoint /pause -user 65535:65535 >&2
  "$tmp/mkimage" -o "$tmp/testapp.tar" -tag "$TESTAPP_IMAGE" -add "$tmp/bin/testapp:/testapp:0755" \
    -entrypoint /testapp -cmd serve -user 65532:65532 -env PATH=/ >&2
  rm -rf "$tmp/bin" "$d"; mv "$tmp" "$d"
  echo "$d"
}

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

import_() {
  local f
  for f in "$@"; do ctr_ images import --no-unpack=false "$f" >/dev/null || die "ctr import $f failed"; done
}

case "${1:-build}" in
  build) build >/dev/null ;;
  dir) images_dir ;;
  load) d="$(build)"; import_ "$d/pause.tar" "$d/testapp.tar"; log "images: loaded $PAUSE_IMAGE $TESTAPP_IMAGE" ;;
  import) shift; import_ "$@" ;;
  *) die "usage: images.sh build|dir|load|import FILE..." ;;
esac
