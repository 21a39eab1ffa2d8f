#!/usr/bin/env bash
# Configures and builds mixattn (release, with tests) in build/. Usage: scripts/build.sh [BUILD_DIR] [CMAKE ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${1:-build}"
shift || true
mkdir -p "$build_dir"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" > "$build_dir/configure.log" 2>&1 || {
  cat "$build_dir/configure.log"
  exit 1
}
cmake --build "$build_dir" -j"$(nproc)"
