#!/usr/bin/env bash
# Runs the test suite against a build of gradclip with AddressSanitizer and
# UndefinedBehaviorSanitizer (GCC or Clang on Linux).
#
#   tools/sanitize.sh                 # the whole suite
#   tools/sanitize.sh tests/test_fuzz.py -x   # any pytest arguments
#
# The build goes into its own virtualenv (which sees the system site-packages, so numpy,
# pytest, hypothesis, scikit-build-core and pybind11 come from there) and its own CMake build
# directory, so the regular install and build tree are left alone. The flags are those of the
# CMake option GRADCLIP_SANITIZE (-fsanitize=address,undefined -fno-omit-frame-pointer), with
# debug info (RelWithDebInfo) for readable reports. To build the same by hand:
#
#   pip install --no-build-isolation -Cbuild-dir=build/asan -Ccmake.build-type=RelWithDebInfo \
#       -Ccmake.define.GRADCLIP_SANITIZE=ON .
#   LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" \
#       ASAN_OPTIONS=detect_leaks=0 python -m pytest
#
# CPython itself is not instrumented, so the ASan runtime must be loaded first (LD_PRELOAD);
# leak detection is off because the interpreter keeps memory alive at exit on purpose. Any
# sanitizer report aborts the process, so a finding fails the run.
#
# Environment: GRADCLIP_ASAN_VENV (default: a new temporary directory), GRADCLIP_ASAN_BUILD
# (default: build/asan), CXX (default: g++; used to locate the ASan runtime).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${GRADCLIP_ASAN_VENV:-$(mktemp -d)/asan-venv}"
BUILD_DIR="${GRADCLIP_ASAN_BUILD:-build/asan}"
CXX="${CXX:-g++}"

python3 -m venv --system-site-packages "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
CXX="$CXX" python -m pip install --quiet --no-build-isolation --no-deps \
    -Cbuild-dir="$BUILD_DIR" \
    -Ccmake.build-type=RelWithDebInfo \
    -Ccmake.define.GRADCLIP_SANITIZE=ON \
    .

LIBASAN="$("$CXX" -print-file-name=libasan.so)"
if [ ! -e "$LIBASAN" ]; then
    echo "sanitize.sh: no ASan runtime found for $CXX ($LIBASAN)" >&2
    exit 2
fi
# (found without importing it: an ASan-built module refuses to load before LD_PRELOAD is set)
pkg="$(cd / && python -c 'import importlib.util as u; print(u.find_spec("gradclip").submodule_search_locations[0])')"
core="$(ls "$pkg"/_core*.so)"
if ! ldd "$core" | grep -q libasan; then
    echo "sanitize.sh: $core is not linked with ASan; is GRADCLIP_SANITIZE honoured?" >&2
    exit 2
fi

# libstdc++ too: CPython is C, so the C++ runtime is only dlopen()ed with the extension, after
# ASan has looked for the __cxa_throw it wraps; without it the first C++ exception (every
# TypeError/ValueError the bindings raise) aborts with "CHECK failed: real___cxa_throw".
LIBSTDCXX="$("$CXX" -print-file-name=libstdc++.so)"
export LD_PRELOAD="$LIBASAN $LIBSTDCXX"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# The huge-array and RSS tests measure memory: ASan's shadow memory would swamp them (the RSS
# tests skip themselves under ASan; the huge one is opt-in anyway).
python -m pytest -p no:cacheprovider "${@:-tests}"
