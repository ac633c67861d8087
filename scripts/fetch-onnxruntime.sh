#!/usr/bin/env bash
# Puts libonnxruntime.so.<version> from the PyPI wheel `onnxruntime==<version>` into the kinfer
# cache and prints its path. Idempotent: a second run downloads nothing.
#
# Why a wheel: ort's own binary download cannot reach its host from here; the PyPI wheel ships the
# same shared library, and PyPI is reachable everywhere the project builds.
#
#   ORT_VERSION   (default 1.31.1)
#   KINFER_CACHE  (default ~/.cache/kinfer)
set -euo pipefail
version="${ORT_VERSION:-1.31.1}"
cache="${KINFER_CACHE:-$HOME/.cache/kinfer}"
dest="$cache/onnxruntime/$version"
lib="$dest/libonnxruntime.so.$version"
if [[ -s "$lib" ]]; then
  echo "$lib"
  exit 0
fi
mkdir -p "$dest"
tmp="$(mktemp -d "$cache/onnxruntime/.dl.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$tmp" "onnxruntime==$version" >&2
wheel="$(ls "$tmp"/onnxruntime-"$version"-*.whl | head -n1)"
python3 - "$wheel" "$tmp/lib" "$version" <<'PY'
import sys, zipfile
wheel, out, version = sys.argv[1:]
name = f"libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z:
    member = next((m for m in z.namelist() if m.endswith("/" + name)), None)
    if member is None:
        sys.exit(f"{name} not found in {wheel}: the wheel layout changed; look for it with `unzip -l`")
    with z.open(member) as src, open(out, "wb") as dst:
        dst.write(src.read())
PY
chmod 0644 "$tmp/lib"
# Atomic publish: a half-written library is never visible under its final name.
mv "$tmp/lib" "$lib"
ln -sf "libonnxruntime.so.$version" "$dest/libonnxruntime.so"
echo "$lib"
