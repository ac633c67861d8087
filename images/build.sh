#!/usr/bin/env bash
# Builds kinfer's container images from images/Dockerfile.* with podman, with no registry:
#
#   images/build.sh [--import] [--no-cargo] [base|operator|runtime|watcher|runtime-gpu]...
#
#   (default: operator, runtime and watcher; runtime-gpu, ~2.8 GB with the CUDA libraries, only
#   when named)
#
#   1. cargo build --release of the binaries, on the host (CARGO_TARGET_DIR, default
#      ~/.cache/kinfer/target), unless --no-cargo;
#   2. the base image kinfer.local/base-cc:bookworm, made from Debian 12 packages (apt-get download
#      libc6 libgcc-s1 libstdc++6 ca-certificates zlib1g → dpkg-deb -x → a rootfs → podman import);
#   3. each image: a build context (stripped binary, ONNX Runtime for the runtime; for runtime-gpu
#      the GPU build of ONNX Runtime and the CUDA libraries from the hash-pinned PyPI wheels of
#      images/gpu-wheels.txt), podman build of its Dockerfile, podman save --format docker-archive
#      → a tarball.
#
# Prints the tarballs' paths on stdout, one per line (logs go to stderr); --import also loads them
# into the running local cluster (tests/e2e/cluster/images.sh import).
#
# Idempotent: everything is keyed by content hashes under ~/.cache/kinfer/images/ (a second run with
# the same binaries, Dockerfiles and packages rebuilds nothing). Podman keeps its storage there too
# (--root), so the host's /var/lib/containers is never touched. Needs root (podman, apt-get).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KINFER_CACHE="${KINFER_CACHE:-$HOME/.cache/kinfer}"
CACHE="${KINFER_IMAGES_CACHE:-$KINFER_CACHE/images}"
ORT_VERSION="${ORT_VERSION:-1.31.1}"
ORT_DIR="$KINFER_CACHE/onnxruntime/$ORT_VERSION"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KINFER_CACHE/target}"
REGISTRY="${KINFER_IMAGE_REGISTRY:-kinfer.local}"
BASE_IMAGE="$REGISTRY/base-cc:bookworm"
# zlib1g: cuDNN links libz (the GPU image); 120 kB in every image.
BASE_PACKAGES=(libc6 libgcc-s1 libstdc++6 ca-certificates zlib1g)
# The image tag is the workspace version (Cargo.toml [workspace.package]), = the chart's appVersion.
TAG="${KINFER_IMAGE_TAG:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml")}"

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }
sha() { sha256sum | cut -c1-16; }

# --- arguments ----------------------------------------------------------------------------------
IMPORT=0 CARGO=1 WANT=()
for a in "$@"; do
  case "$a" in
    --import) IMPORT=1 ;;
    --no-cargo) CARGO=0 ;;
    base|operator|runtime|watcher|runtime-gpu) WANT+=("$a") ;;
    -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$a' (see --help)" ;;
  esac
done
(( ${#WANT[@]} )) || WANT=(operator runtime watcher)
[[ -n "$TAG" ]] || die "cannot read the workspace version from Cargo.toml"
[[ $EUID -eq 0 ]] || die "run as root (podman and apt-get need it here)"
mkdir -p "$CACHE"
# One build at a time per cache (the build contexts and podman's storage are shared).
exec 9>"$CACHE/.lock"
flock -n 9 || { log "another images/build.sh is running; waiting for it"; flock 9; }

# --- podman ----------------------------------------------------------------------------------------
if ! command -v podman >/dev/null; then
  log "podman is missing: apt-get install podman (Debian 12: podman 4.3)"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman >&2
fi
# Our own storage, so nothing here touches (or depends on) the host's podman images. Overlay is
# tried first; a kernel or filesystem without overlay support falls back to vfs (slower, bigger).
PODMAN_ROOT="$CACHE/podman"
mkdir -p "$PODMAN_ROOT"
driver="$(cat "$PODMAN_ROOT/driver" 2>/dev/null || true)"
if [[ -z "$driver" ]]; then
  driver=overlay
  if ! podman --root "$PODMAN_ROOT/storage-overlay" --runroot "$PODMAN_ROOT/run-overlay" \
       --storage-driver overlay info >/dev/null 2>"$PODMAN_ROOT/overlay-probe.log"; then
    log "podman overlay storage does not work here ($(tail -1 "$PODMAN_ROOT/overlay-probe.log")); using vfs"
    driver=vfs
  fi
  echo "$driver" > "$PODMAN_ROOT/driver"
fi
PODMAN=(podman --root "$PODMAN_ROOT/storage-$driver" --runroot "$PODMAN_ROOT/run-$driver" --storage-driver "$driver")

# --- 1. binaries -----------------------------------------------------------------------------------
declare -A BIN=([operator]=kinfer-operator [runtime]=kinfer-runtime [watcher]=kinfer-watcher [runtime-gpu]=kinfer-runtime)
images=()
for w in "${WANT[@]}"; do [[ "$w" == base ]] || images+=("$w"); done
if (( CARGO && ${#images[@]} )); then
  pkgs=(); for w in "${images[@]}"; do [[ " ${pkgs[*]} " == *" ${BIN[$w]} "* ]] || pkgs+=(-p "${BIN[$w]}"); done
  log "cargo build --release ${pkgs[*]} (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO" && cargo build --release "${pkgs[@]}" >&2) || die "cargo build failed"
fi
for w in "${images[@]}"; do
  [[ -x "$CARGO_TARGET_DIR/release/${BIN[$w]}" ]] || die "$CARGO_TARGET_DIR/release/${BIN[$w]} is missing (build it, or drop --no-cargo)"
done
if [[ " ${images[*]} " == *" runtime"* && ! -f "$ORT_DIR/libonnxruntime.so.$ORT_VERSION" ]]; then
  log "ONNX Runtime $ORT_VERSION is missing: scripts/fetch-onnxruntime.sh"
  ORT_VERSION="$ORT_VERSION" KINFER_CACHE="$KINFER_CACHE" "$REPO/scripts/fetch-onnxruntime.sh" >&2
fi

# The GPU image's ONNX Runtime and CUDA libraries: the hash-pinned wheels of images/gpu-wheels.txt,
# downloaded once into a cache keyed by that file, their shared libraries unpacked beside them.
GPU_WHEELS="$REPO/images/gpu-wheels.txt"
gpu_libs() { # prints the directory holding lib/ (ONNX Runtime) and cuda/ (the CUDA libraries)
  local key dir py
  key="$(sha < "$GPU_WHEELS")"; dir="$KINFER_CACHE/gpu-wheels/$key"
  if [[ -f "$dir/done" ]]; then echo "$dir"; return; fi
  py="${KINFER_VENV:-$REPO/.venv}/bin/python"; [[ -x "$py" ]] || py=python3
  rm -rf "$KINFER_CACHE/gpu-wheels"; mkdir -p "$dir/wheels"
  log "runtime-gpu: pip download of images/gpu-wheels.txt (onnxruntime-gpu and the nvidia-* wheels, ~1.4 GB)"
  "$py" -m pip download --quiet --no-deps --only-binary :all: --require-hashes \
    -r "$GPU_WHEELS" -d "$dir/wheels" >&2 || die "pip download -r images/gpu-wheels.txt failed"
  # ONNX Runtime's libraries from onnxruntime/capi/ (not the Python module); from the nvidia-*
  # wheels every lib/*.so* but the two that nothing loads (NVBLAS, the FFTW shim).
  "$py" - "$dir" >&2 <<'PY' || die "unpacking the GPU wheels failed"
import os, pathlib, sys, zipfile
out = pathlib.Path(sys.argv[1])
for sub in ("lib", "cuda"):
    (out / sub).mkdir(exist_ok=True)
for whl in sorted((out / "wheels").glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            base = os.path.basename(name)
            if name.startswith("onnxruntime/capi/lib") and ".so" in base:
                dest = out / "lib" / base
            elif name.startswith("nvidia/") and "/lib/" in name and ".so" in base \
                    and not base.startswith(("libnvblas", "libcufftw")):
                dest = out / "cuda" / base
            else:
                continue
            dest.write_bytes(z.read(info))
            dest.chmod(0o644)
PY
  rm -rf "$dir/wheels"; touch "$dir/done"
  log "runtime-gpu: $(du -sh "$dir" | cut -f1) of libraries in $dir"
  echo "$dir"
}

# --- 2. the base image -------------------------------------------------------------------------------
# The recipe is this function; its hash (with the packages' SHA256 from apt's lists) keys the cache.
make_rootfs() { # $1 = rootfs dir, $2 = dir of .deb files
  local root="$1" debs="$2" d pkg
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$root"; done
  # What a service never needs: iconv modules (8 MB), docs, man pages, gdb/lintian data,
  # the CA maintenance script and its config (the bundle is generated below).
  rm -rf "$root"/usr/lib/x86_64-linux-gnu/gconv "$root"/usr/share/{doc,man,info,lintian,gdb,gcc,locale} \
         "$root"/usr/sbin "$root"/etc/ca-certificates "$root"/etc/ca-certificates.conf
  # The CA bundle that update-ca-certificates would write (ca-certificates' postinst does not run).
  mkdir -p "$root/etc/ssl/certs"
  find "$root/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat > "$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root/usr/share/ca-certificates"
  # dpkg status entries, as distroless writes them, so image scanners see the packages.
  mkdir -p "$root/var/lib/dpkg/status.d"
  for d in "$debs"/*.deb; do
    pkg="$(dpkg-deb -f "$d" Package)"
    { dpkg-deb -f "$d" Package Version Architecture Maintainer Source Description | sed '/^Description/,$d'
      echo "Status: install ok installed"; } > "$root/var/lib/dpkg/status.d/$pkg"
  done
  # Users: root and nonroot (65532), the uid every kinfer container runs as.
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
  printf 'PRETTY_NAME="kinfer base-cc (Debian GNU/Linux 12 packages)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=debian\n' > "$root/etc/os-release"
  mkdir -p "$root/tmp" "$root/home/nonroot" "$root/root"
  chmod 1777 "$root/tmp"; chmod 0700 "$root/root"; chown 65532:65532 "$root/home/nonroot"
}

base_key() {
  { declare -f make_rootfs
    apt-cache show --no-all-versions "${BASE_PACKAGES[@]}" 2>/dev/null | grep -E '^(Package|Version|SHA256):' \
      || echo "${BASE_PACKAGES[*]}"; } | sha
}

build_base() {
  local key="$BASE_KEY" id tmp
  id="$("${PODMAN[@]}" image inspect --format '{{ index .Labels "dev.kinfer.base.key" }}' "$BASE_IMAGE" 2>/dev/null || true)"
  if [[ "$id" == "$key" ]]; then log "base: $BASE_IMAGE cached ($key)"; return; fi
  log "base: making $BASE_IMAGE from Debian packages: ${BASE_PACKAGES[*]}"
  tmp="$CACHE/tmp.base.$$"; rm -rf "$tmp"; mkdir -p "$tmp/debs" "$tmp/rootfs"
  if [[ -d "$CACHE/debs-$key" ]]; then
    cp "$CACHE/debs-$key"/*.deb "$tmp/debs/"
  else
    # apt warns that it downloads "unsandboxed as root": harmless, the files are ours.
    (cd "$tmp/debs" && apt-get download "${BASE_PACKAGES[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) \
      || die "apt-get download ${BASE_PACKAGES[*]} failed (run apt-get update?)"
    rm -rf "$CACHE"/debs-*; cp -r "$tmp/debs" "$CACHE/debs-$key"
  fi
  make_rootfs "$tmp/rootfs" "$tmp/debs"
  tar --numeric-owner --sort=name --mtime=@0 -C "$tmp/rootfs" -cf "$tmp/rootfs.tar" .
  "${PODMAN[@]}" import --quiet \
    --change 'USER 65532:65532' \
    --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change "LABEL dev.kinfer.base.key=$key" \
    --change "LABEL dev.kinfer.base.packages=${BASE_PACKAGES[*]}" \
    "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
  log "base: $BASE_IMAGE $(du -sh "$tmp/rootfs" | cut -f1) ($key)"
  rm -rf "$tmp"
}

# The GPU build holds its 2.4 GB of libraries several times over while it runs (the build stage's
# layer, the image's, the layer being committed, the tarball): 11.5 GiB free space at the peak
# (measured with overlay storage). Without that room podman fails after minutes with "no space
# left on device" in the middle of a layer; this says so first, with the figures and the fix.
GPU_BUILD_NEEDS_GIB="${KINFER_GPU_BUILD_NEEDS_GIB:-12}"
enough_space_for_gpu() { # $1 = the directory podman's storage and the tarball live under
  local free_gib
  free_gib=$(( $(df --output=avail -k "$1" | tail -1) / 1024 / 1024 ))
  (( free_gib >= GPU_BUILD_NEEDS_GIB )) || die "runtime-gpu needs about $GPU_BUILD_NEEDS_GIB GiB free under $1 \
(podman's storage and the image tarball) and $free_gib GiB are free: make room (cargo's \
$CARGO_TARGET_DIR/debug/incremental and Go's build cache, \`go clean -cache\`, are the usual \
big ones) and run it again"
}

# --- 3. the images -----------------------------------------------------------------------------------
build_image() { # $1 = operator|runtime|watcher|runtime-gpu
  local w="$1" name="kinfer-$1" bin="${BIN[$1]}" ctx key out gpu=""
  ctx="$CACHE/context/$w"; rm -rf "$ctx"; mkdir -p "$ctx/bin"
  # Line tables (debug = "line-tables-only" in the release profile) are dropped: about half the
  # binary. The symbol table stays, so panics and backtraces still name functions; the unstripped
  # binary stays in CARGO_TARGET_DIR.
  objcopy --strip-debug "$CARGO_TARGET_DIR/release/$bin" "$ctx/bin/$bin"
  if [[ "$w" == runtime ]]; then
    mkdir -p "$ctx/lib" "$ctx/smoke"
    cp "$ORT_DIR/libonnxruntime.so.$ORT_VERSION" "$ctx/lib/"
    cp "$REPO/images/smoke/add-one.onnx" "$ctx/smoke/"
  fi
  if [[ "$w" == runtime-gpu ]]; then
    gpu="$(gpu_libs)"
    mkdir -p "$ctx/smoke"
    # Hard links: the context costs no space and no copy of the 2.4 GB.
    cp -al "$gpu/lib" "$gpu/cuda" "$ctx/"
    cp "$REPO/images/smoke/add-one.onnx" "$ctx/smoke/"
  fi
  cp "$REPO/images/Dockerfile.$w" "$ctx/Dockerfile"
  # The GPU libraries are keyed by images/gpu-wheels.txt (their hashes) instead of 2.4 GB read.
  local skip=(); [[ -z "$gpu" ]] || skip=(! -path './lib/*' ! -path './cuda/*')
  key="$( { (cd "$ctx" && find . -type f "${skip[@]}" | LC_ALL=C sort | xargs sha256sum)
            [[ -z "$gpu" ]] || sha256sum < "$GPU_WHEELS"; echo "$BASE_KEY $TAG $REGISTRY"; } | sha)"
  out="$CACHE/$name-$TAG-$key.tar"
  if [[ -f "$out" ]]; then log "$name: cached ($out)"; echo "$out"; return; fi
  [[ -z "$gpu" ]] || enough_space_for_gpu "$CACHE"
  log "$name: podman build -f images/Dockerfile.$w"
  # --isolation chroot: this host's cgroup v1 (hybrid) layout makes crun refuse to create RUN
  # containers ("cgroups in hybrid mode not supported"); chroot isolation needs no OCI runtime.
  # --timestamp 0: the same inputs give the same image ID.
  "${PODMAN[@]}" build --isolation chroot --timestamp 0 --pull=never --layers=false \
    -t "$REGISTRY/$name:$TAG" -f "$ctx/Dockerfile" "$ctx" >&2 || die "podman build of $name failed"
  rm -f "$CACHE/$name-$TAG-"*.tar "$out.tmp"
  "${PODMAN[@]}" save --quiet --format docker-archive -o "$out.tmp" "$REGISTRY/$name:$TAG" >/dev/null
  mv "$out.tmp" "$out"
  log "$name: $(numfmt --to=iec --suffix=B "$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$REGISTRY/$name:$TAG")") → $out"
  # The tarball is what is kept: 2.4 GB more in podman's storage buys nothing.
  [[ -z "$gpu" ]] || "${PODMAN[@]}" rmi "$REGISTRY/$name:$TAG" >/dev/null 2>&1 || true
  echo "$out"
}

BASE_KEY="$(base_key)"
build_base
outs=()
for w in "${images[@]}"; do outs+=("$(build_image "$w")"); done
"${PODMAN[@]}" image prune -f >/dev/null 2>&1 || true
printf '%s\n' "${outs[@]}"
if (( IMPORT && ${#outs[@]} )); then
  log "importing into the local cluster's containerd"
  "$REPO/tests/e2e/cluster/images.sh" import "${outs[@]}"
fi
