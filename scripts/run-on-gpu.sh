#!/usr/bin/env bash
# Runs the CUDA build of beatlab (scripts/build-cuda.sh) on a GPU machine that has no Rust and no
# CUDA toolkit, only the NVIDIA driver and a Python environment with PyTorch's CUDA 13 packages.
#
# The binary is linked against libcuda.so.1 (from the driver) and against cuBLAS, cuBLASLt,
# cuRAND, NVRTC and the CUDA runtime (.so.13 / .so.10), which PyTorch installs as nvidia/*
# packages in site-packages. This script finds those folders, puts them on LD_LIBRARY_PATH, checks
# that every library resolves, and execs the binary with the arguments given.
#
# Usage: scripts/run-on-gpu.sh [beatlab arguments...]
#        scripts/run-on-gpu.sh --check      (show what would run and how each library resolves)
# Environment:
#   BEATLAB_BIN        the binary or its .xz (default: the first of beatlab.xz or beatlab beside
#                      this script, target/cuda/dist/beatlab.xz, target/cuda/release/beatlab)
#   BEATLAB_CUDA_LIBS  ':'-separated library folders searched before PyTorch's
#   PYTHON             interpreter whose site-packages hold the nvidia packages (default: python3)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

say() { printf 'run-on-gpu: %s\n' "$*" >&2; }
die() {
    printf 'run-on-gpu: ERROR: %s\n' "$*" >&2
    exit 127
}

check_only=false
if [[ ${1:-} == --check ]]; then
    check_only=true
    shift
fi

# --- the binary ----------------------------------------------------------------------------------
# build-cuda.sh leaves an xz-packed copy (the full binary is too big to carry); unpack it beside
# itself on first use, and again whenever the archive is newer.
unpack() {
    local packed=$1 out=${1%.xz}
    if [[ -x $out && ! $packed -nt $out ]]; then
        echo "$out"
        return 0
    fi
    say "unpacking $packed"
    if command -v xz >/dev/null 2>&1; then
        xz -dc "$packed" >"$out.tmp.$$" || die "could not unpack $packed with xz"
    else
        "${PYTHON:-python3}" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$packed" "$out.tmp.$$" || die "could not unpack $packed (no xz, and Python's lzma failed)"
    fi
    chmod +x "$out.tmp.$$"
    mv "$out.tmp.$$" "$out"
    echo "$out"
}

bin=${BEATLAB_BIN:-}
if [[ -z $bin ]]; then
    for candidate in "$here/beatlab.xz" "$here/beatlab" "$repo/target/cuda/dist/beatlab.xz" \
        "$repo/target/cuda/release/beatlab"; do
        if [[ -f $candidate ]]; then
            bin=$candidate
            break
        fi
    done
fi
[[ -n $bin ]] || die "no beatlab binary: carry target/cuda/dist/beatlab.xz (from scripts/build-cuda.sh), put beatlab or beatlab.xz beside this script, or name it with BEATLAB_BIN"
[[ -f $bin ]] || die "$bin does not exist"
if [[ $bin == *.xz ]]; then
    # `beatlab bench` runs beatlab-bench from beside beatlab: unpack it there too.
    bench_packed=$(dirname "$bin")/beatlab-bench.xz
    if [[ -f $bench_packed ]]; then
        unpack "$bench_packed" >/dev/null || exit 127
    fi
    bin=$(unpack "$bin") || exit 127
fi
[[ -x $bin ]] || die "$bin is not executable"

# --- the library folders -------------------------------------------------------------------------
lib_dirs=()
add_dir() {
    local dir=$1 existing
    [[ -d $dir ]] || return 0
    for existing in "${lib_dirs[@]}"; do
        [[ $existing == "$dir" ]] && return 0
    done
    # build-cuda.sh's libcuda link stub returns an error from every call: a folder holding it would
    # hide the driver's real libcuda.so.1.
    if [[ -f $dir/libcuda.so.1 ]] && grep -q libcuda_stub "$dir/libcuda.so.1" 2>/dev/null; then
        say "skipping $dir: its libcuda.so.1 is build-cuda.sh's link stub, not the driver"
        return 0
    fi
    lib_dirs+=("$dir")
}

if [[ -n ${BEATLAB_CUDA_LIBS:-} ]]; then
    IFS=: read -ra extra_dirs <<<"$BEATLAB_CUDA_LIBS"
    for dir in "${extra_dirs[@]}"; do
        add_dir "$dir"
    done
fi

# `nvidia` is a namespace package: each site-packages folder that has nvidia/* wheels is one entry
# of its __path__, and each wheel keeps its libraries in nvidia/<name>/lib (CUDA 13 wheels share
# nvidia/cu13/lib).
python=${PYTHON:-python3}
nvidia_dirs=$("$python" -c '
import glob, os, nvidia
for root in nvidia.__path__:
    for lib in sorted(glob.glob(os.path.join(root, "*", "lib"))):
        print(lib)' 2>/dev/null || true)
if [[ -z $nvidia_dirs ]]; then
    # No importable `nvidia` (another interpreter, or a bare image): look where pip puts it.
    nvidia_dirs=$(compgen -G '/usr/local/lib/python3*/dist-packages/nvidia/*/lib' || true)
    for pattern in '/usr/local/lib/python3*/site-packages/nvidia/*/lib' \
        '/usr/lib/python3/dist-packages/nvidia/*/lib' \
        '/opt/conda/lib/python3*/site-packages/nvidia/*/lib' \
        "$HOME/.local/lib/python3*/site-packages/nvidia/*/lib"; do
        nvidia_dirs+=$'\n'$(compgen -G "$pattern" || true)
    done
fi
while IFS= read -r dir; do
    [[ -n $dir ]] && add_dir "$dir"
done <<<"$nvidia_dirs"

joined=$(
    IFS=:
    echo "${lib_dirs[*]}"
)
export LD_LIBRARY_PATH=$joined${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# --- does every library resolve? ----------------------------------------------------------------
if command -v ldd >/dev/null 2>&1; then
    resolution=$(ldd "$bin" 2>&1 || true)
    missing=$(awk '/not found/ {print $1}' <<<"$resolution" | tr '\n' ' ')
    if $check_only; then
        say "binary: $bin"
        say "library folders: ${joined:-none found}"
        grep -E 'libcuda|libcublas|libcurand|libnvrtc|libcudart' <<<"$resolution" >&2 || true
        if command -v nvidia-smi >/dev/null 2>&1; then
            nvidia-smi -L >&2 || true
        fi
    fi
    if [[ $missing == *libcuda.so.1* ]]; then
        die "no NVIDIA driver on this machine (libcuda.so.1 not found): run the CPU build of beatlab instead"
    fi
    if [[ -n $missing ]]; then
        die "cannot find ${missing% } in ${joined:-no nvidia/*/lib folder}: install PyTorch's CUDA 13 packages (pip install torch), or name the folders with BEATLAB_CUDA_LIBS"
    fi
fi
if $check_only; then
    say "every library resolves: ok"
    exit 0
fi

exec "$bin" "$@"
