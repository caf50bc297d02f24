#!/usr/bin/env bash
# Build, once per machine, the two real OpenAI-compatible servers that `make test-real` runs:
#   - a wheel of llama-cpp-python (its `python -m llama_cpp.server`), from the PyPI sdist;
#   - llama.cpp's own `llama-server`, built with cmake from the llama.cpp that sdist vendors.
# Both land in a cache outside the repo; a second run only checks the cache (seconds).
#
#   .ci/llama.sh                       # build what is missing, print the paths
#   DOCROUTE_LLAMA_CACHE=/x .ci/llama.sh
#
# Environment: DOCROUTE_LLAMA_CACHE (default ~/.cache/docroute-llama), LLAMA_CPP_PYTHON_VERSION
# (default below), PYTHON (a python with pip; default .venv/bin/python, else python3),
# LLAMA_JOBS (default 2). Builds are CPU only, for any x86-64 with AVX2 (or any aarch64), not
# -march=native: on this machine's CPU a native build enables ggml's AMX kernels, and
# llama-server then dies with SIGSEGV in ggml_backend_amx_mul_mat while warming up.
set -euo pipefail

VER="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${DOCROUTE_LLAMA_CACHE:-$HOME/.cache/docroute-llama}"
JOBS="${LLAMA_JOBS:-2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

log() { printf '[llama.sh] %s\n' "$*"; }

# What a build depends on: version, flags, machine. A change of any of them rebuilds.
SERVER_FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF     # one self-contained binary to copy into the cache
    -DGGML_NATIVE=OFF           # AVX2/FMA/F16C, no AVX-512 or AMX (see above)
    -DLLAMA_CURL=OFF            # deprecated in newer llama.cpp, harmless there
    -DLLAMA_OPENSSL=OFF         # loopback http only
    -DLLAMA_BUILD_UI=OFF        # no npm
    -DLLAMA_USE_PREBUILT_UI=OFF # no download of the web UI at build time
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_TOOLS=ON
)
WHEEL_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF"
cpu_key() {  # the machine's architecture, and whether it has the AVX2 the x86 build needs
    { uname -m; grep -m1 -ow avx2 /proc/cpuinfo 2>/dev/null || true; } | sha256sum | cut -c1-12
}
KEY="$VER-$(cpu_key)-$(printf '%s ' "${SERVER_FLAGS[@]}" "$WHEEL_CMAKE_ARGS" | sha256sum | cut -c1-8)"

SDIST="$CACHE/src/llama_cpp_python-$VER.tar.gz"
SRC="$CACHE/src/llama_cpp_python-$VER"
SERVER_BIN="$CACHE/bin/llama-server"
SERVER_STAMP="$CACHE/bin/llama-server.key"
WHEEL_STAMP="$CACHE/wheel.key"

fetch_source() {
    if [[ ! -f "$SDIST" ]]; then
        log "downloading the llama-cpp-python $VER source package from PyPI"
        mkdir -p "$CACHE/src"
        "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
            "llama-cpp-python==$VER" -d "$CACHE/src"
    fi
    if [[ ! -d "$SRC/vendor/llama.cpp" ]]; then
        log "unpacking $SDIST"
        tar -xzf "$SDIST" -C "$CACHE/src"
    fi
}

build_server() {
    if [[ -x "$SERVER_BIN" && "$(cat "$SERVER_STAMP" 2>/dev/null)" == "$KEY" ]]; then
        log "llama-server is cached: $SERVER_BIN"
        return
    fi
    local started=$SECONDS
    fetch_source
    local build="$CACHE/build/llama-server-$VER"
    log "building llama-server from $SRC/vendor/llama.cpp into $build (-j$JOBS, takes minutes)"
    nice -n 10 cmake -S "$SRC/vendor/llama.cpp" -B "$build" "${SERVER_FLAGS[@]}"
    nice -n 10 cmake --build "$build" --target llama-server -j "$JOBS"
    mkdir -p "$CACHE/bin"
    install -m 0755 "$build/bin/llama-server" "$SERVER_BIN.tmp"
    mv "$SERVER_BIN.tmp" "$SERVER_BIN"
    printf '%s\n' "$KEY" >"$SERVER_STAMP"
    log "built $SERVER_BIN in $((SECONDS - started)) s"
}

build_wheel() {
    local wheel
    wheel="$(ls "$CACHE"/llama_cpp_python-"$VER"-*.whl 2>/dev/null | head -n1 || true)"
    if [[ -n "$wheel" && "$(cat "$WHEEL_STAMP" 2>/dev/null)" == "$KEY" ]]; then
        log "llama-cpp-python wheel is cached: $wheel"
        return
    fi
    local started=$SECONDS
    fetch_source
    rm -f "$CACHE"/llama_cpp_python-"$VER"-*.whl
    log "building the llama-cpp-python $VER wheel from $SDIST (-j$JOBS, takes ~20 minutes)"
    CMAKE_ARGS="$WHEEL_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
        nice -n 10 "$PYTHON" -m pip wheel --no-deps --wheel-dir "$CACHE" "$SDIST"
    printf '%s\n' "$KEY" >"$WHEEL_STAMP"
    log "built $(ls "$CACHE"/llama_cpp_python-"$VER"-*.whl) in $((SECONDS - started)) s"
}

log "cache: $CACHE (llama-cpp-python $VER, key $KEY)"
build_server
build_wheel
log "llama-server: $SERVER_BIN"
log "install with: pip install --find-links $CACHE 'llama-cpp-python[server]==$VER'"
