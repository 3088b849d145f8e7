#!/usr/bin/env bash
# Runs gradclip's tests against a build with AddressSanitizer and UndefinedBehaviorSanitizer
# (GCC or Clang on Linux): one ASan+UBSan build of the extension and of the C++ test of the
# core (cpp/tests), then that test (through ctest), then pytest against the extension.
#
#   tools/sanitize.sh                          # the C++ test, then the whole Python suite
#   tools/sanitize.sh tests/test_fuzz.py -x    # the C++ test, then any pytest arguments
#   GRADCLIP_ASAN_SKIP_CPP=1 tools/sanitize.sh tests/test_fuzz.py   # Python only
#
# It works from a clean checkout on a machine with Python, pip and a C++ compiler: everything
# else (CMake, Ninja, the build requirements, the test extra) is installed into its own
# virtualenv, and the builds go into their own directories, so the regular install and
# build tree are left alone. The flags are those of the CMake option GRADCLIP_SANITIZE
# (-fsanitize=address,undefined -fno-omit-frame-pointer), with debug info (RelWithDebInfo)
# for readable reports, at -O1 (the ASan documentation's advice for speed with readable
# reports; GRADCLIP_ASAN_OPT=-O2 builds at -O2 instead). To build the same by hand:
#
#   pip install --no-build-isolation -Cbuild-dir=build/asan -Ccmake.build-type=RelWithDebInfo \
#       "-Ccmake.define.CMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g -DNDEBUG" \
#       -Ccmake.define.GRADCLIP_SANITIZE=ON -Ccmake.define.GRADCLIP_BUILD_TESTS=ON .
#   ctest --test-dir build/asan
#   LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" \
#       ASAN_OPTIONS=detect_leaks=0 python -m pytest
#
# CPython itself is not instrumented, so the ASan runtime must be loaded first (LD_PRELOAD);
# leak detection is off in the Python run because the interpreter keeps memory alive at exit
# on purpose (the C++ test runs with it on). Any sanitizer report aborts the process, so a
# finding fails the run. Tests that cannot run under ASan skip themselves with the reason:
# the RSS tests (shadow memory swamps them) and the fault-injection test (ASan owns malloc).
#
# Environment: GRADCLIP_ASAN_VENV (default: a new temporary directory; an existing virtualenv
# is reused), GRADCLIP_ASAN_BUILD (default: build/asan; the build, the extension's and the
# C++ test's together, goes into its "python" subdirectory), CXX (default: g++; also used to locate the ASan runtime),
# GRADCLIP_ASAN_SKIP_CPP=1 (skip the C++ test).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${GRADCLIP_ASAN_VENV:-$(mktemp -d)/asan-venv}"
BUILD_DIR="${GRADCLIP_ASAN_BUILD:-build/asan}"
CXX="${CXX:-g++}"
export CXX

if ! command -v "$CXX" >/dev/null 2>&1; then
    echo "sanitize.sh: no C++ compiler ($CXX)" >&2
    exit 2
fi
LIBASAN="$("$CXX" -print-file-name=libasan.so)"
if [ ! -e "$LIBASAN" ]; then
    echo "sanitize.sh: no ASan runtime found for $CXX ($LIBASAN)" >&2
    exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
# pip >= 23.1 for -C (config settings); the build requirements of pyproject.toml (the build below is not isolated, so that the
# CMake build directory stays valid between runs), CMake and Ninja
python -m pip install --quiet --upgrade pip
python -m pip install --quiet cmake ninja "scikit-build-core>=0.10" "pybind11>=2.13" "cython>=3.1"

# ---- one build with the sanitizers: the extension, and with it the C++ core's test
# (GRADCLIP_BUILD_TESTS=ON adds the test to the same CMake build, so the engine is compiled
# once for both)
start=$SECONDS
python -m pip install --quiet --no-build-isolation \
    -Cbuild-dir="$BUILD_DIR/python" \
    -Ccmake.build-type=RelWithDebInfo \
    "-Ccmake.define.CMAKE_CXX_FLAGS_RELWITHDEBINFO=${GRADCLIP_ASAN_OPT:--O1} -g -DNDEBUG" \
    -Ccmake.define.GRADCLIP_SANITIZE=ON \
    -Ccmake.define.GRADCLIP_BUILD_TESTS=ON \
    ".[test]"
echo "sanitize.sh: built with ASan+UBSan in $((SECONDS - start)) s"

# ---- the C++ core's test (no Python involved)
if [ "${GRADCLIP_ASAN_SKIP_CPP:-0}" != 1 ]; then
    start=$SECONDS
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        ctest --test-dir "$BUILD_DIR/python" --output-on-failure --no-tests=error
    echo "sanitize.sh: the C++ test passed under ASan+UBSan in $((SECONDS - start)) s"
fi

# (found without importing it: an ASan-built module refuses to load before LD_PRELOAD is set)
pkg="$(cd / && python -c 'import importlib.util as u; print(u.find_spec("gradclip").submodule_search_locations[0])')"
core="$(ls "$pkg"/_core*.so)"
# (ldd's output is read whole before grep looks at it: with pipefail, `ldd | grep -q` fails
# at random when grep exits at the first match and ldd is killed by SIGPIPE)
ldd_out="$(ldd "$core")"
if ! grep -q libasan <<<"$ldd_out"; then
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
