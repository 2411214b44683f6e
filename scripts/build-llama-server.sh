#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama.cpp source vendored in the
# llama-cpp-python sdist (PyPI), or reuse the cached build of that version.
# The binary's path is the last line printed.
#
#   scripts/build-llama-server.sh            # default pinned version
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 scripts/build-llama-server.sh
#
# GGML_NATIVE=OFF: a native build segfaults on some CPUs in the AMX matmul path.
# The cache lives in ${RLAIF_LLAMA_CACHE:-$HOME/.cache/rlaif/llama-server}/<version>/.
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
root="${RLAIF_LLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rlaif/llama-server}"
dest="$root/$version"
bin="$dest/bin/llama-server"
if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
    echo "llama-server $version: cached" >&2
    echo "$bin"
    exit 0
fi
mkdir -p "$root"
exec 9>"$root/.lock-$version"
flock 9
if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
    echo "$bin"
    exit 0
fi
work="$(mktemp -d "$root/build-$version.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "llama-server $version: downloading the llama-cpp-python sdist" >&2
python3 -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version" >&2
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
[[ -f "$src/CMakeLists.txt" ]] || { echo "no vendored llama.cpp in the sdist" >&2; exit 1; }
echo "llama-server $version: building (GGML_NATIVE=OFF, about 15 minutes on 2 cores)" >&2
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >"$work/cmake.log" 2>&1 \
    || { tail -30 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; exit 1; }
mkdir -p "$work/out/bin"
cp "$work/build/bin/llama-server" "$work/out/bin/"
"$work/out/bin/llama-server" --version >&2
rm -rf "$dest"
mv "$work/out" "$dest"
echo "$bin"
