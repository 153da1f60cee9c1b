#!/usr/bin/env bash
# Builds the CUDA beatlab binary on a machine with no GPU and no CUDA toolkit.
#
# The toolkit comes from pinned PyPI wheels of ONE CUDA release (13.0, what the GPU machines'
# driver 580 supports) installed into a git-ignored venv; the binary goes to its own target dir so
# the CPU builds in target/{debug,release} are never touched. See ../shared/docs/stack-notes.md,
# "CUDA build without a GPU".
#
# Usage: scripts/build-cuda.sh   (idempotent: a second run re-checks, and rebuilds what changed)
# Output: target/cuda/release/beatlab (full binary) and target/cuda/dist/beatlab.xz (the stripped,
#         compressed copy to carry to a GPU machine, where scripts/run-on-gpu.sh runs it).
# Environment knobs:
#   BEATLAB_CUDA_VENV        venv holding the toolkit wheels      (default: .venv-cuda)
#   BEATLAB_CUDA_TARGET_DIR  cargo target dir of the CUDA build   (default: target/cuda)
#   BEATLAB_CUDA_JOBS        cargo -j                             (default: cargo's choice)
#   CUDA_COMPUTE_CAP         GPU architecture for candle's kernels (default: 90, H100/H200)
#   PYTHON                   interpreter that creates the venv    (default: python3)
set -euo pipefail

started_at=$SECONDS
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

venv=${BEATLAB_CUDA_VENV:-$repo/.venv-cuda}
target_dir=${BEATLAB_CUDA_TARGET_DIR:-$repo/target/cuda}
compute_cap=${CUDA_COMPUTE_CAP:-90}
python=${PYTHON:-python3}
# The device tool carries at most 64 MiB of ignored files; say so when the binary outgrows it.
carry_limit_bytes=$((64 * 1024 * 1024))

# Every part pinned to the CUDA 13.0 release: installing nvcc alone pulls the newest (13.5) crt and
# nvvm and mixes releases, and cudarc 0.19 knows CUDA only up to 13.4.
pins=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)
cuda_release=13.0

say() { printf 'build-cuda: %s\n' "$*"; }
die() {
    printf 'build-cuda: ERROR: %s\n' "$*" >&2
    exit 1
}
trap 'die "failed at line $LINENO (exit $?): see the output above"' ERR

need() {
    command -v "$1" >/dev/null 2>&1 || die "\`$1\` not found on PATH: $2"
}
need cargo "install Rust (rustup) first"
need rustc "install Rust (rustup) first"
need cc "a C compiler is needed to build the libcuda link stub (apt-get install gcc)"
need g++ "nvcc needs a host C++ compiler (apt-get install g++)"
need objcopy "binutils strip the carried copy of the binary (apt-get install binutils)"
need xz "xz compresses the carried copy of the binary (apt-get install xz-utils)"
need "$python" "Python 3 with the venv module creates the toolkit venv (or set PYTHON=...)"

# --- 1. The toolkit: pinned wheels in a venv ---------------------------------------------------
if [[ ! -x $venv/bin/python ]]; then
    say "creating venv $venv"
    "$python" -m venv "$venv" || die "could not create a venv with $python (apt-get install python3-venv?)"
fi
vpy=$venv/bin/python
pin_stamp=$venv/.beatlab-cuda-pins
if [[ -f $pin_stamp && $(cat "$pin_stamp") == "${pins[*]}" ]]; then
    say "toolkit wheels already installed (${pins[*]})"
else
    say "installing CUDA $cuda_release wheels (about 1.2 GB on first run): ${pins[*]}"
    "$vpy" -m pip install --disable-pip-version-check --quiet "${pins[@]}" ||
        die "pip could not install the pinned CUDA wheels (is PyPI reachable?)"
fi

# Every nvidia-* distribution in the venv must be one of the pins: anything else means a part of
# another CUDA release slipped in, and nvcc would mix headers and libraries of two releases.
"$vpy" - "${pins[@]}" <<'PY' || die "the venv's CUDA wheels do not match the pins (remove $venv and rerun)"
import sys
from importlib import metadata

wanted = dict(pin.split("==") for pin in sys.argv[1:])
found = {}
for dist in metadata.distributions():
    name = dist.metadata["Name"].lower().replace("_", "-")
    if name.startswith("nvidia-"):
        found[name] = dist.version
bad = [f"{n} is missing (want {v})" for n, v in wanted.items() if n not in found]
bad += [f"{n} is {v}, want {wanted[n]}" for n, v in found.items() if n in wanted and v != wanted[n]]
bad += [f"{n} {v} is not pinned (another CUDA release?)" for n, v in found.items() if n not in wanted]
for line in bad:
    print(f"build-cuda:   {line}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
printf '%s' "${pins[*]}" >"$pin_stamp"

cu13=$("$vpy" -c 'import nvidia, os; print(next(os.path.join(p, "cu13") for p in nvidia.__path__ if os.path.isdir(os.path.join(p, "cu13"))))') ||
    die "no nvidia/cu13 folder in $venv: the CUDA 13 wheels put bin/, include/, lib/ and nvvm/ there"
[[ -x $cu13/bin/nvcc ]] || die "nvcc missing at $cu13/bin/nvcc"
nvcc_version=$("$cu13/bin/nvcc" --version) || die "$cu13/bin/nvcc does not run"
grep -q "release $cuda_release," <<<"$nvcc_version" ||
    die "nvcc is not CUDA $cuda_release: $(grep release <<<"$nvcc_version")"
say "nvcc: $cu13/bin/nvcc (CUDA $cuda_release)"

# --- 2. What the linker needs ----------------------------------------------------------------
# cudarc links with -lcuda -lcublas -lcublasLt -lcurand -lnvrtc and candle's kernels with
# -lcudart. The wheels ship only the versioned runtime libraries (libcublas.so.13, ...) and no
# libcuda at all (that comes from the GPU driver), so this folder gets the unversioned names the
# linker looks for, plus a link stub for libcuda whose SONAME is the driver's `libcuda.so.1`: the
# binary then asks the loader for the real driver library on the GPU machine.
# The stub must never be on LD_LIBRARY_PATH there: it would hide the real driver.
link_dir=$venv/cuda-link
mkdir -p "$link_dir"
for lib in cublas cublasLt curand nvrtc cudart; do
    versioned=$(find "$cu13/lib" -maxdepth 1 -name "lib$lib.so.[0-9]*" | sort | head -n 1)
    [[ -n $versioned ]] || die "lib$lib.so.* not found in $cu13/lib"
    ln -sfn "$versioned" "$link_dir/lib$lib.so"
done

# The stub defines every driver entry point that cudarc can declare, read from cudarc's own
# bindings, so the link never misses a symbol whichever of them candle ends up calling. Each one
# returns CUDA_ERROR_STUB_LIBRARY (34), the code NVIDIA's own stubs return, so a binary that loads
# the stub (here, or by mistake) fails with that error instead of computing garbage; the two
# error-text functions answer, so the error says what happened.
# --filter-platform: resolve for this host only, so cargo does not fetch every Windows/wasm crate.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo_metadata=$(cargo metadata --locked --format-version 1 --features cuda --filter-platform "$host") ||
    die "cargo metadata failed (is Cargo.lock up to date and crates.io reachable?)"
cudarc_dir=$("$vpy" -c '
import json, os, sys
meta = json.load(sys.stdin)
dirs = [os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] == "cudarc"]
if len(dirs) != 1:
    sys.exit(f"expected one cudarc package in the cuda build, found {len(dirs)}")
print(dirs[0])' <<<"$cargo_metadata") || die "could not locate cudarc's source"
driver_bindings=$cudarc_dir/src/driver/sys/mod.rs
[[ -f $driver_bindings ]] || die "cudarc's driver bindings are not at $driver_bindings"
stub_c=$link_dir/libcuda_stub.c
{
    echo "/* Generated by scripts/build-cuda.sh from $driver_bindings: link-time stand-in for the"
    echo "   NVIDIA driver library. Never load it at run time. */"
    echo 'int cuGetErrorName(int error, const char **text) {'
    echo '    *text = error == 34 ? "CUDA_ERROR_STUB_LIBRARY" : "CUDA_ERROR_UNKNOWN";'
    echo '    return 0;'
    echo '}'
    echo 'int cuGetErrorString(int error, const char **text) {'
    echo '    (void)error;'
    echo '    *text = "no NVIDIA driver: this libcuda.so.1 is the link stub of scripts/build-cuda.sh";'
    echo '    return 0;'
    echo '}'
    grep -oE '^pub unsafe fn cu[A-Z][A-Za-z0-9_]*' "$driver_bindings" | sed 's/^pub unsafe fn //' |
        grep -vx 'cuGetErrorName\|cuGetErrorString' | sort -u | sed 's/.*/int &(void) { return 34; }/'
} >"$stub_c.new"
symbol_count=$(grep -c 'return 34' "$stub_c.new" || true)
((symbol_count > 100)) || die "found only $symbol_count driver functions in $driver_bindings: has cudarc's layout changed?"
if [[ -f $link_dir/libcuda.so.1 ]] && cmp -s "$stub_c.new" "$stub_c"; then
    rm "$stub_c.new"
    say "libcuda link stub up to date ($symbol_count symbols)"
else
    mv "$stub_c.new" "$stub_c"
    cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$link_dir/libcuda.so.1" "$stub_c" ||
        die "could not compile the libcuda link stub"
    say "built libcuda link stub ($symbol_count symbols, SONAME libcuda.so.1)"
fi
ln -sfn libcuda.so.1 "$link_dir/libcuda.so"

# --- 3. The build ----------------------------------------------------------------------------
export PATH=$cu13/bin:$PATH
export CUDA_ROOT=$cu13 CUDA_HOME=$cu13 CUDA_PATH=$cu13
export CUDA_COMPUTE_CAP=$compute_cap
export LIBRARY_PATH=$link_dir${LIBRARY_PATH:+:$LIBRARY_PATH}
export CARGO_TARGET_DIR=$target_dir
jobs=()
[[ -n ${BEATLAB_CUDA_JOBS:-} ]] && jobs=(-j "$BEATLAB_CUDA_JOBS")

say "cargo build --release --features cuda into $target_dir (sm_$compute_cap; the first build"
say "  compiles candle's CUDA kernels with nvcc: 30-40 minutes on 2 busy cores)"
cargo_started=$SECONDS
cargo build --release --locked -p beatlab --bin beatlab -p beatlab-bench --bin beatlab-bench \
    --features beatlab/cuda,beatlab-bench/cuda "${jobs[@]}" ||
    die "cargo build --features cuda failed"
cargo_seconds=$((SECONDS - cargo_started))

binary=$target_dir/release/beatlab
[[ -x $binary ]] || die "the build reported success but $binary is missing"

# --- 4. The copy to carry -----------------------------------------------------------------------
# The full binary is ~175 MiB, most of it debug line tables (the release profile keeps them for
# backtraces); without them it is ~67 MiB, still over the device tool's 64 MiB, and xz brings that
# to ~11 MiB. Symbols stay, so panics on the GPU machine still name their functions.
# run-on-gpu.sh unpacks it on first use.
dist_dir=$target_dir/dist
mkdir -p "$dist_dir"
# Packs target/cuda/release/NAME into dist/NAME.xz unless the archive is newer.
pack() {
    local name=$1 from=$target_dir/release/$1 to=$dist_dir/$1.xz
    [[ -x $from ]] || die "the build reported success but $from is missing"
    if [[ -f $to && $to -nt $from ]]; then
        say "packed copy up to date: $to"
        return 0
    fi
    say "packing $to (strip debug info, xz; about a minute)"
    objcopy --strip-debug "$from" "$dist_dir/$name.stripped.tmp" || die "objcopy --strip-debug failed"
    xz -6 -T0 -c "$dist_dir/$name.stripped.tmp" >"$to.tmp" || die "xz failed"
    rm "$dist_dir/$name.stripped.tmp"
    mv "$to.tmp" "$to"
    # An unpacked copy from an older build must not outlive its archive.
    rm -f "$dist_dir/$name"
}
# beatlab-bench is `beatlab bench` (run-on-gpu.sh unpacks it beside beatlab).
pack beatlab
pack beatlab-bench
packed=$dist_dir/beatlab.xz

size_mib() { echo "$(($(stat -c %s "$1") / 1024 / 1024)) MiB"; }
needed=$(readelf -d "$binary" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ' || true)
glibc=$(objdump -T "$binary" 2>/dev/null | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -n 1 || true)
rel_packed=${packed#"$repo"/}
rel_binary=${binary#"$repo"/}

cat <<EOM

build-cuda: done in $((SECONDS - started_at)) s (cargo: $cargo_seconds s)
  binary:   $binary ($(size_mib "$binary"))
  to carry: $packed ($(size_mib "$packed"), stripped of debug info, xz)
  needs:    $needed
  glibc:    ${glibc:-?} or newer on the machine that runs it

Run it on a GPU machine (NVIDIA driver >= 580, i.e. CUDA 13.0; no Rust needed there). The driver
provides libcuda.so.1; cuBLAS, cuRAND and the CUDA runtime come from the image's PyTorch nvidia/*
packages, which scripts/run-on-gpu.sh finds and puts on LD_LIBRARY_PATH:
  device tool: carry ["$rel_packed", "${rel_packed%beatlab.xz}beatlab-bench.xz"], then run
    scripts/run-on-gpu.sh --check
    scripts/run-on-gpu.sh run experiments/<spec>.toml --device cuda
  by hand:     copy beatlab.xz and scripts/run-on-gpu.sh into one folder there, then
    ./run-on-gpu.sh run <spec> --device cuda
On this machine (no GPU) the binary loads only with the link stub and the wheels' libraries on
the path, and then reports that no NVIDIA driver is usable:
  LD_LIBRARY_PATH=$link_dir:$cu13/lib $rel_binary run <spec> --device cuda
EOM
if (($(stat -c %s "$packed") > carry_limit_bytes)); then
    say "WARNING: $rel_packed is over the device tool's 64 MiB carry limit"
fi
