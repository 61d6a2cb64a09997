#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the pinned llama-cpp-python sdist (the llama.cpp source it vendors) and
# cache it under .cache/compat/. A second run finds the cached binary and returns at once.
# Prints the binary's path on the last line of stdout.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${COMPAT_CACHE:-$ROOT/.cache/compat}"
PY="${PY:-$ROOT/.venv/bin/python}"
JOBS="${COMPAT_JOBS:-2}"
SRC="$CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
BIN="$CACHE/bin-$LLAMA_CPP_PYTHON_VERSION/llama-server"

if [[ -x "$BIN" ]]; then
	echo "$BIN"
	exit 0
fi

mkdir -p "$CACHE"
if [[ ! -d "$SRC" ]]; then
	echo "compat: downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist" >&2
	"$PY" -m pip download --disable-pip-version-check -q "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" \
		--no-binary llama-cpp-python --no-deps -d "$CACHE/sdist" >&2
	tar -xzf "$CACHE/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$CACHE"
fi

echo "compat: building llama-server (about 5 minutes on 2 cores; cached afterwards)" >&2
cd "$SRC/vendor/llama.cpp"
# Portable x86-64 flags: GGML_NATIVE=OFF so the binary does not depend on the build machine's exact CPU; no curl
# (models come from a local file) and no web UI.
nice -n 10 cmake -S . -B build -DCMAKE_BUILD_TYPE=Release \
	-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
nice -n 10 cmake --build build --target llama-server -j"$JOBS" >&2
mkdir -p "$(dirname "$BIN")"
cp build/bin/llama-server "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
