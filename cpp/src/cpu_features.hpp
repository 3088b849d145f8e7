// Run-time CPU feature checks for choosing a kernel target (dispatch.cpp). Built with the
// baseline flags only, so it runs on any CPU of the architecture.
#pragma once

namespace gradclip {

// Whether this CPU has every feature in `features`, a space-separated list of names
// (cpp/CMakeLists.txt gives each kernel target its list); true for an empty list, false
// for a name cpu_features.cpp does not know.
bool cpu_has_all(const char* features) noexcept;

}  // namespace gradclip
