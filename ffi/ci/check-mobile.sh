#!/usr/bin/env bash
# `cargo check` of tailor-ffi for Android (aarch64-linux-android) and iOS (aarch64-apple-ios)
# on a Linux machine without the NDK or Xcode. Type-checking the Rust needs no SDK, but the
# build scripts of C dependencies (SQLite in rusqlite, ring under the model downloader)
# compile C for the target. Here they are compiled with the aarch64 Linux cross compiler
# (the objects are never linked into anything): for Android through CC_<target>, for iOS
# through a stand-in `xcrun` and a compiler wrapper that drops Apple-only flags.
#
#   bash ffi/ci/check-mobile.sh [android] [ios]     (default: both)
#
# On iOS tailor-memory builds without hnsw_rs (its mmap-rs 0.7.0 imports
# `libc::proc_regionfilename`, declared by libc for macOS only) and searches exactly.
set -euo pipefail
cd "$(dirname "$0")/../.."

shim="$(mktemp -d)"
trap 'rm -rf "$shim"' EXIT
cat > "$shim/xcrun" <<'SH'
#!/bin/sh
for a in "$@"; do
  case "$a" in
    --show-sdk-path) echo /; exit 0;;
    --show-sdk-version|--show-sdk-platform-version) echo 17.0; exit 0;;
  esac
done
echo "$(dirname "$0")/apple-cc"
SH
cat > "$shim/apple-cc" <<'SH'
#!/bin/sh
# aarch64-linux-gnu-gcc without Apple's -arch/-isysroot/-m*os-version-min/-gfull flags.
args=""
skip=""
for a in "$@"; do
  if [ -n "$skip" ]; then skip=""; continue; fi
  case "$a" in
    -arch|-isysroot) skip=1;;
    -miphoneos-version-min=*|-mios-version-min=*|-mios-simulator-version-min=*|-gfull) ;;
    *) args="$args '$(printf %s "$a" | sed "s/'/'\\\\''/g")'";;
  esac
done
eval exec aarch64-linux-gnu-gcc $args
SH
chmod +x "$shim/xcrun" "$shim/apple-cc"

[ $# -gt 0 ] || set -- android ios
for platform in "$@"; do
    case "$platform" in
        android)
            echo "== cargo check tailor-ffi --target aarch64-linux-android =="
            CC_aarch64_linux_android=aarch64-linux-gnu-gcc AR_aarch64_linux_android=aarch64-linux-gnu-ar \
                cargo check --release -p tailor-ffi --target aarch64-linux-android
            ;;
        ios)
            echo "== cargo check tailor-ffi --target aarch64-apple-ios =="
            PATH="$shim:$PATH" SDKROOT=/ CC_aarch64_apple_ios="$shim/apple-cc" AR_aarch64_apple_ios=aarch64-linux-gnu-ar \
                cargo check --release -p tailor-ffi --target aarch64-apple-ios
            ;;
        *) echo "unknown platform $platform (android, ios)" >&2; exit 2;;
    esac
done
