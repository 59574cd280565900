// The storage backends every device-level suite runs across (src/backend).
#pragma once

#include <string>

namespace iceblk::test {

enum class BackendKind { kMemory, kFileSync, kFileUring };

// "memory", "file_sync", "file_uring" (gtest parameter names).
inline std::string backend_name(BackendKind k) {
  switch (k) {
    case BackendKind::kMemory: return "memory";
    case BackendKind::kFileSync: return "file_sync";
    case BackendKind::kFileUring: return "file_uring";
  }
  return "?";
}

}  // namespace iceblk::test
