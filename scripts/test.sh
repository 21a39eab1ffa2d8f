#!/usr/bin/env bash
# Runs every test: the release build's CTest suite (unit tests and the PyTorch parity test), the
# short libFuzzer run of the safetensors and config parsers (a clang build), and the same suite
# under AddressSanitizer + UndefinedBehaviorSanitizer. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds="${MIXATTN_FUZZ_SECONDS:-20}"

echo "== formatting (.clang-format)"
git ls-files '*.cc' '*.h' | xargs clang-format --dry-run --Werror

echo "== release build + tests"
scripts/build.sh build
ctest --test-dir build --output-on-failure -j"$(nproc)"

# Fuzzing builds with clang, so it also catches code g++ accepts and clang rejects; it runs
# before the long sanitizer stage so that such an error fails fast.
echo "== fuzzing (${fuzz_seconds}s per target)"
scripts/run-fuzz.sh "$fuzz_seconds"

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build + tests"
scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DMIXATTN_SANITIZE=ON
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$(nproc)"
