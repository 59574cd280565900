// Temporary directories for tests.
#pragma once

#include <string>

namespace iceblk::test {

// mkdtemp("/tmp/<prefix>-XXXXXX"); empty on failure.
std::string make_temp_dir(const char* prefix);

// A temporary directory, removed with everything in it when this goes away.
class TempDir {
 public:
  explicit TempDir(const char* prefix = "iceblk-test") : path_(make_temp_dir(prefix)) {}
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] bool valid() const { return !path_.empty(); }

 private:
  std::string path_;
};

}  // namespace iceblk::test
