# Cross-compiling the C++ core for 64-bit ARM Linux with Debian's cross toolchain
# (apt-get install g++-aarch64-linux-gnu qemu-user), the tests run under qemu-user:
#
#   cmake -S . -B build/aarch64 --toolchain cpp/cmake/aarch64-linux-gnu.cmake -DGRADCLIP_BUILD_TESTS=ON
#   cmake --build build/aarch64 && ctest --test-dir build/aarch64
#
# ctest runs each test through CMAKE_CROSSCOMPILING_EMULATOR. GRADCLIP_AARCH64_SYSROOT is where
# the target's C library lives (Debian's cross packages put it in /usr/aarch64-linux-gnu); qemu
# loads the dynamic linker and libraries from there.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(GRADCLIP_AARCH64_TRIPLE aarch64-linux-gnu CACHE STRING "GNU triple of the cross toolchain")
set(GRADCLIP_AARCH64_SYSROOT /usr/${GRADCLIP_AARCH64_TRIPLE} CACHE PATH "the target's libraries, for qemu -L")

set(CMAKE_C_COMPILER ${GRADCLIP_AARCH64_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${GRADCLIP_AARCH64_TRIPLE}-g++)

set(CMAKE_FIND_ROOT_PATH ${GRADCLIP_AARCH64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(GRADCLIP_QEMU_AARCH64 qemu-aarch64 qemu-aarch64-static)
if(GRADCLIP_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${GRADCLIP_QEMU_AARCH64} -L ${GRADCLIP_AARCH64_SYSROOT})
endif()
