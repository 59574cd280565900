// Per-thread context attached to log records as structured fields (the journal
// sink, src/daemon/journal_sink.h, sends them as ICEBLK_EXPORT= and ICEBLK_QUEUE=).
// The daemon's export thread sets the export name; a vring worker inherits its
// creator's context and adds its queue index. Plain stderr lines do not show it.
#pragma once

#include <string>

namespace iceblk::log {

struct Context {
  std::string export_name;  // "" outside an export's threads
  int queue = -1;           // virtqueue index, -1 outside a vring worker
};

inline Context& thread_context() {
  static thread_local Context ctx;
  return ctx;
}

// Names the export for the records logged on this thread while it lives.
class ScopedExport {
 public:
  explicit ScopedExport(const std::string& name) : saved_(thread_context().export_name) {
    thread_context().export_name = name;
  }
  ~ScopedExport() { thread_context().export_name = saved_; }
  ScopedExport(const ScopedExport&) = delete;
  ScopedExport& operator=(const ScopedExport&) = delete;

 private:
  std::string saved_;
};

}  // namespace iceblk::log
