// Test helpers for running the real iceblkd binary: spawn with stdout+stderr
// captured to a file, wait with a timeout, signal. Plus small filesystem helpers.
#pragma once

#include <string>
#include <vector>

#include <sys/types.h>

#include "support/temp_dir.h"

namespace iceblk::testing {

class Subprocess {
 public:
  // Spawn `argv[0]` with `argv`; stdout and stderr go to `log_path` (truncated).
  // pid() is -1 when the spawn failed.
  Subprocess(const std::vector<std::string>& argv, const std::string& log_path);
  ~Subprocess();  // SIGKILL + reap if still running
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool running();
  void signal(int sig) const;
  // Wait up to timeout_ms for the exit. True when it exited (see exit_code/term_signal).
  bool wait(int timeout_ms);
  [[nodiscard]] bool exited_normally() const { return exited_ && term_signal_ == 0; }
  [[nodiscard]] int exit_code() const { return exit_code_; }
  [[nodiscard]] int term_signal() const { return term_signal_; }
  // Everything the process printed so far.
  [[nodiscard]] std::string output() const;

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  bool exited_ = false;
  int exit_code_ = -1;
  int term_signal_ = 0;
};

// Run to completion (timeout 20 s); returns {exit code or 128+signal, output}.
struct RunResult {
  int code = -1;
  std::string output;
};
RunResult run_to_exit(const std::vector<std::string>& argv, const std::string& log_path);

// True once a vhost-user server accepts connections on `path` (within timeout_ms).
bool wait_for_listener(const std::string& path, int timeout_ms = 10000);
// Non-empty lines of `text`.
std::vector<std::string> lines_of(const std::string& text);
// A fresh directory under /tmp, removed by the caller (support/temp_dir.h).
using iceblk::test::make_temp_dir;
void write_file(const std::string& path, const std::string& text);

}  // namespace iceblk::testing
