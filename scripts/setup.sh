#!/usr/bin/env bash
# Installs everything mixattn needs from Debian 12 packages. Safe to run again: packages already
# present are skipped, and nothing is downloaded when all are there.
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config git clang libclang-rt-14-dev clang-format
  # libraries (ARCHITECTURE.md, "Numbers and dependencies")
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev libyaml-cpp-dev
  libsentencepiece-dev libdnnl-dev libhwy-dev libcpp-httplib-dev zlib1g-dev
  # Debian's dnnl-config.cmake looks for OpenCL even for the CPU build; libdnnl-dev only
  # recommends it, and recommends are not installed here
  ocl-icd-opencl-dev
  # data-parallel training (mpirun -np N mixattn train)
  libopenmpi-dev openmpi-bin
  # test oracle and plots: Debian's own Python with PyTorch
  python3 python3-torch python3-numpy python3-yaml python3-matplotlib
  # an optimised BLAS for PyTorch's f32 matmuls: with Debian's reference libblas3 alone, torch
  # multiplies at ~3 GFLOP/s here and the training benchmark would compare against a strawman
  libopenblas0-pthread
  # the server's end-to-end test with the official openai npm client (tests/server/)
  nodejs
)
# Debian's npm, unless the Node already installed bundles its own (NodeSource's does).
command -v npm > /dev/null || packages+=(npm)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages are installed"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "setup: installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup: done"
