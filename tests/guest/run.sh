#!/usr/bin/env bash
# The real-module test harness: boots Debian's kernel under qemu (TCG) with v4l2loopback loaded,
# the host root shared read-only over 9p, and runs the v4l2loopsink guest tests against the real
# driver — once per v4l2loopback source: Debian's DKMS package (0.12.x on bookworm) and the newest
# one in bookworm-backports (0.13.x or later), built here. Nothing is pinned: the kernel is the
# one the installed linux-image-amd64 depends on, the module versions are what the packages hold.
#
#   tests/guest/run.sh                  all guest tests, both module sources
#   tests/guest/run.sh --bench          the 1280x720 benchmark instead of the tests (debian);
#                                       plugins/v4l2loopsink/bench/run.sh runs this
#   VCB_GUEST_VERSIONS=backports tests/guest/run.sh  one source only (debian | backports)
#   VCB_GUEST_KVER=6.1.0-57-amd64                    another installed kernel (default: derived)
#   VCB_GUEST_FILTER=keepalive tests/guest/run.sh    only tests whose name contains the filter
#   VCB_GUEST_CMD='v4l2-ctl --list-devices' tests/guest/run.sh   debugging: run a command instead
#   VCB_GUEST_TIMEOUT=600                            seconds per boot before qemu is killed
#
# Everything it builds is cached under target/guest/ (modules, initramfs, GStreamer registry).
# Exits non-zero if a module cannot be built, the guest does not boot, or any test fails.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
G="$ROOT/target/guest"
SOURCES="${VCB_GUEST_VERSIONS:-debian backports}"
BOOT_TIMEOUT="${VCB_GUEST_TIMEOUT:-600}"
MODE=test
if [ "${1:-}" = "--bench" ]; then MODE=bench; SOURCES="${VCB_GUEST_VERSIONS:-debian}"; fi

log() { printf 'guest: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The kernel: the ABI that the installed metapackage linux-image-amd64 depends on (Debian moves
# it with every kernel security update), else the newest /boot/vmlinuz-* that has headers.
installed_kver() {
  local dep kver
  dep="$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null || true)"
  kver="$(printf '%s\n' "$dep" | tr ',|' '\n\n' | sed -n 's/^ *linux-image-\([0-9][^ ]*\).*/\1/p' | head -n1)"
  if [ -n "$kver" ] && [ -r "/boot/vmlinuz-$kver" ] && [ -d "/lib/modules/$kver/build" ]; then
    echo "$kver"; return 0
  fi
  for k in $(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -rV); do
    if [ -d "/lib/modules/$k/build" ]; then echo "$k"; return 0; fi
  done
  [ -n "$kver" ] && echo "$kver"
}
KVER="${VCB_GUEST_KVER:-$(installed_kver)}"
[ -n "$KVER" ] || die "no kernel found: no linux-image-amd64 installed and no /boot/vmlinuz-* with headers; run scripts/install-deps.sh"
log "kernel $KVER"

KERNEL="/boot/vmlinuz-$KVER"
KBUILD="/lib/modules/$KVER/build"
[ -r "$KERNEL" ] || die "$KERNEL missing: run scripts/install-deps.sh (linux-image-amd64)"
[ -d "$KBUILD" ] || die "$KBUILD missing: run scripts/install-deps.sh (linux-headers-amd64)"
for p in qemu-system-x86_64 cpio busybox modprobe make; do
  command -v "$p" >/dev/null || die "$p not found: run scripts/install-deps.sh"
done
mkdir -p "$G"

# --- v4l2loopback modules, one per version, built against the guest kernel -------------------
build_module() { # <version> <source dir>
  local ver="$1" src="$2"
  local dst="$G/modules/$KVER/$ver"
  if [ -f "$dst/v4l2loopback.ko" ]; then return 0; fi
  log "building v4l2loopback $ver for $KVER"
  rm -rf "$dst.src" && mkdir -p "$dst" && cp -r "$src" "$dst.src"
  make -s -C "$KBUILD" M="$dst.src" modules >"$dst.build.log" 2>&1 \
    || { cat "$dst.build.log" >&2; die "building v4l2loopback $ver failed"; }
  cp "$dst.src/v4l2loopback.ko" "$dst/v4l2loopback.ko"
  cp "$dst.src/v4l2loopback.h" "$dst/" 2>/dev/null || true
}

# Debian's DKMS source (whatever version the installed v4l2loopback-dkms holds).
module_debian() {
  local ver
  ver="$(dpkg-query -W -f='${Version}' v4l2loopback-dkms 2>/dev/null | sed 's/^[0-9]*://; s/-[^-]*$//')"
  [ -n "$ver" ] || die "v4l2loopback-dkms is not installed: run scripts/install-deps.sh"
  local src="/usr/src/v4l2loopback-$ver"
  [ -d "$src" ] || die "$src missing although v4l2loopback-dkms $ver is installed: reinstall it (apt-get install --reinstall v4l2loopback-dkms)"
  build_module "$ver" "$src"
  MODULE_VERSION="$ver"
}

# The newest v4l2loopback-dkms in bookworm-backports, downloaded (not installed) with a private
# apt state under target/ (the system's apt config is untouched); re-checked once a day.
module_backports() {
  local apt="$G/apt" deb ver
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/deb"
  echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1
    -o APT::Sandbox::User=root)
  deb="$(ls -t "$apt/deb"/v4l2loopback-dkms_*.deb 2>/dev/null | head -n1 || true)"
  if [ -z "$deb" ] || [ -n "$(find "$deb" -mtime +0 2>/dev/null)" ]; then
    log "downloading the newest v4l2loopback-dkms from bookworm-backports"
    if apt-get -q "${opts[@]}" update >"$apt/update.log" 2>&1 \
        && (cd "$apt/deb" && apt-get -q "${opts[@]}" download v4l2loopback-dkms) >"$apt/download.log" 2>&1; then
      deb="$(ls -t "$apt/deb"/v4l2loopback-dkms_*.deb | head -n1)"
      touch "$deb"
    elif [ -n "$deb" ]; then
      log "could not refresh from bookworm-backports (see $apt/download.log); using $deb"
    else
      cat "$apt/update.log" "$apt/download.log" >&2 2>/dev/null || true
      die "downloading v4l2loopback-dkms from bookworm-backports failed (no network to deb.debian.org?)"
    fi
  fi
  ver="$(dpkg-deb -f "$deb" Version | sed 's/^[0-9]*://; s/-[^-]*$//')"
  rm -rf "$apt/x" && dpkg-deb -x "$deb" "$apt/x"
  [ -d "$apt/x/usr/src/v4l2loopback-$ver" ] || die "$deb holds no /usr/src/v4l2loopback-$ver"
  build_module "$ver" "$apt/x/usr/src/v4l2loopback-$ver"
  MODULE_VERSION="$ver"
}

VERSIONS=""
for source in $SOURCES; do
  case "$source" in
    debian|0.12.*) module_debian ;;
    backports|0.1[3-9].*) module_backports ;;
    *) die "unknown v4l2loopback source $source (known: debian backports)" ;;
  esac
  case " $VERSIONS " in *" $MODULE_VERSION "*) ;; *) VERSIONS="${VERSIONS:+$VERSIONS }$MODULE_VERSION" ;; esac
done
log "v4l2loopback versions: $VERSIONS"

# --- initramfs: busybox + virtio/9p modules + tests/guest/init -------------------------------
BASE_MODS=(9p 9pnet_virtio virtio_pci mc videodev vivid)
mapfile -t MODPATHS < <(modprobe -S "$KVER" --show-depends -a "${BASE_MODS[@]}" | awk '$1=="insmod"{print $2}' | awk '!seen[$0]++')
stamp="$(printf '%s\n' "$KVER" "${MODPATHS[@]}" | cat - tests/guest/init "$(command -v busybox)" | sha256sum | cut -c1-16)"
INITRD="$G/initramfs-$stamp.cpio.gz"
if [ ! -f "$INITRD" ]; then
  log "building initramfs $INITRD"
  rm -rf "$G/initramfs" && mkdir -p "$G/initramfs"/{bin,proc,sys,dev,modules,newroot}
  cp "$(command -v busybox)" "$G/initramfs/bin/busybox"
  cp tests/guest/init "$G/initramfs/init"
  : >"$G/initramfs/modules.order"
  for m in "${MODPATHS[@]}"; do
    case "$m" in */v4l2loopback.ko) continue ;; esac
    b="$(basename "$m")"
    cp "$m" "$G/initramfs/modules/$b"
    args=""
    # vivid: one instance with a single video capture node (a capture-only, non-loopback device).
    [ "$b" = vivid.ko ] && args="n_devs=1 node_types=0x1"
    echo "$b $args" >>"$G/initramfs/modules.order"
  done
  (cd "$G/initramfs" && find . | cpio -o -H newc --quiet | gzip -1) >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
fi

# --- host-side builds: the plugin, the guest test binary, the GStreamer registry --------------
export CARGO_TERM_COLOR=never
PLUGIN_DIR="$ROOT/target/debug"
REGISTRY="$G/registry-$MODE.bin"
if [ -n "${VCB_GUEST_CMD:-}" ]; then
  MODE=custom  # debugging: run this shell command in the guest instead of the tests
else
  log "building the plugin and the guest test binary"
  cargo build -q -p gst-plugin-v4l2loopsink
  # The test target's own artifact (a crate's binaries are built too and reported alongside).
  TEST_BIN="$(cargo test -q -p gst-plugin-v4l2loopsink --test guest --no-run --message-format=json \
    | grep '"kind":\["test"\],[^}]*"name":"guest"' \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)"
  [ -x "$TEST_BIN" ] || die "could not build the guest test binary"
  # The Python camera API (vcamera.py) and the main job (rtmp-camera.sh) against the real
  # module: test binaries of their own, run after.
  cargo build -q -p gst-plugin-shmring -p gst-plugin-rtmpflvsrc
  VCAMERA_BIN="$(cargo test -q -p vcambridge-tests --test vcamera_guest --no-run --message-format=json \
    | grep '"kind":\["test"\],[^}]*"name":"vcamera_guest"' \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)"
  [ -x "$VCAMERA_BIN" ] || die "could not build the vcamera guest test binary"
  MAIN_JOB_BIN="$(cargo test -q -p vcambridge-tests --test main_job_guest --no-run --message-format=json \
    | grep '"kind":\["test"\],[^}]*"name":"main_job_guest"' \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)"
  [ -x "$MAIN_JOB_BIN" ] || die "could not build the main-job guest test binary"
  BENCH_BIN=""
  if [ "$MODE" = bench ]; then
    cargo build -q --release -p gst-plugin-v4l2loopsink
    # The bench target (harness = false; release profile), built like the test binaries above.
    BENCH_BIN="$(cargo bench -q -p gst-plugin-v4l2loopsink --bench v4l2loopsink --no-run --message-format=json \
      | grep '"kind":\["bench"\],[^}]*"name":"v4l2loopsink"' \
      | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)"
    [ -x "$BENCH_BIN" ] || die "could not build the benchmark binary"
    # The benchmark loads the release build of the plugin.
    PLUGIN_DIR="$ROOT/target/release"
  else
    PLUGIN_DIR="$ROOT/target/debug"
  fi
  REGISTRY="$G/registry-$MODE.bin"
  rm -f "$REGISTRY"
  GST_REGISTRY="$REGISTRY" GST_PLUGIN_PATH="$PLUGIN_DIR" gst-inspect-1.0 v4l2loopsink >/dev/null \
    || die "gst-inspect-1.0 cannot load v4l2loopsink from $PLUGIN_DIR"
  # GStreamer writes its registry 0600. Tests run some commands as 'nobody' (permission errors);
  # unable to read it, they would rescan every plugin in-process (GST_REGISTRY_FORK=no), ~13 s on
  # the host and 40 s+ under TCG: the command's timeout, not its error, decided such a test.
  chmod a+r "$REGISTRY"
fi

# --- one boot per module version ----------------------------------------------------------------
failed=0
for ver in $VERSIONS; do
  OUT="$G/out/$ver"
  rm -rf "$OUT" && mkdir -p "$OUT"
  ko="$G/modules/$KVER/$ver/v4l2loopback.ko"
  # Devices: 10 exclusive_caps=1 "vcam-excl", 11 exclusive_caps=0 "vcam-plain", 12 spare
  # exclusive_caps=1 "vcam-lock"; vivid gives a capture-only device (non-loopback) as /dev/video0.
  # max_buffers stays at its default (2): with more, GStreamer 1.22's v4l2src fails against any
  # writer ("Failed to allocate a buffer": the driver hands out buffers the reader never mapped).
  cat >"$OUT/setup.sh" <<SETUP
/bin/busybox insmod /newroot$ko devices=3 video_nr=10,11,12 card_label=vcam-excl,vcam-plain,vcam-lock exclusive_caps=1,0,1 || echo "VCB-WARN loading v4l2loopback $ver failed"
SETUP
  if [ "$MODE" = custom ]; then
    run_cmd="$VCB_GUEST_CMD"
  elif [ "$MODE" = bench ]; then
    run_cmd="$BENCH_BIN"
  else
    run_cmd="$TEST_BIN --ignored --test-threads=1 ${VCB_GUEST_FILTER:-}; s=\$?
$VCAMERA_BIN --ignored --test-threads=1 ${VCB_GUEST_FILTER:-} || s=\$((s ? s : 1))
$MAIN_JOB_BIN --ignored --test-threads=1 ${VCB_GUEST_FILTER:-} || s=\$((s ? s : 1)); exit \$s"
  fi
  cat >"$OUT/cmd.sh" <<CMD
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp XDG_RUNTIME_DIR=/tmp TMPDIR=/tmp
export GST_REGISTRY="$REGISTRY" GST_REGISTRY_UPDATE=no GST_REGISTRY_FORK=no
export GST_PLUGIN_PATH="$PLUGIN_DIR" VCAMBRIDGE_PLUGIN_DIR="$PLUGIN_DIR"
export VCAMBRIDGE_GUEST=1 VCAMBRIDGE_V4L2LOOPBACK_VERSION=$ver RUST_BACKTRACE=1 G_DEBUG=fatal_warnings
export VCAMBRIDGE_GUEST_OUT=/tmp/out
${BENCH_FRAMES:+export BENCH_FRAMES=$BENCH_FRAMES}
${BENCH_RUNS:+export BENCH_RUNS=$BENCH_RUNS}
${BENCH_DEVICE:+export BENCH_DEVICE=$BENCH_DEVICE}
cd "$ROOT"
echo "v4l2loopback: \$(cat /sys/module/v4l2loopback/version 2>/dev/null)"
ls /dev/video* /dev/v4l2loopback 2>/dev/null | tr '\n' ' '; echo
$run_cmd
CMD
  # Paths under the host's /tmp would be hidden by the guest's tmpfs /tmp: keep them visible.
  KEEP=""
  for p in "$ROOT" "${CARGO_TARGET_DIR:-}"; do
    case "$p" in
      /tmp/?*) top="/tmp/$(echo "${p#/tmp/}" | cut -d/ -f1)"
               case ",$KEEP," in *",$top,"*) ;; *) KEEP="${KEEP:+$KEEP,}$top" ;; esac ;;
    esac
  done
  log "booting the guest with v4l2loopback $ver ($MODE)"
  start=$(date +%s)
  set +e
  timeout --foreground -k 10 "$BOOT_TIMEOUT" qemu-system-x86_64 \
    -machine q35 -accel tcg,thread=multi -smp 2 -m 1536 -nodefaults -no-reboot \
    -display none -monitor none -serial stdio \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init${KEEP:+ vcb_keep=$KEEP}" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$OUT,mount_tag=out,security_model=none,multidevs=remap" \
    </dev/null 2>&1 | tee "$OUT/console.log"
  qrc=${PIPESTATUS[0]}
  set -e
  took=$(( $(date +%s) - start ))
  rc="$(sed -n 's/^VCB-EXIT=\([0-9]*\).*/\1/p' "$OUT/console.log" | tr -d '\r' | tail -n1)"
  if [ -z "$rc" ]; then
    log "v4l2loopback $ver: the guest did not report an exit status (qemu rc=$qrc after ${took}s; timeout ${BOOT_TIMEOUT}s) — see $OUT/console.log"
    failed=1
  elif [ "$rc" != 0 ]; then
    log "v4l2loopback $ver: FAILED (exit $rc, ${took}s) — see $OUT/console.log"
    failed=1
  else
    log "v4l2loopback $ver: passed (${took}s)"
  fi
done
exit $failed
