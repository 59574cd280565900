#include "base/version.h"

#include <dlfcn.h>
#include <openssl/crypto.h>
#include <openssl/opensslv.h>

#include <climits>
#include <cstdlib>
#include <string>

#include "iceblk_build_info.h"
#include "iceblk_git_revision.h"

namespace iceblk::version {

std::string_view project() {
  return ICEBLK_VERSION;
}
std::string_view git_revision() {
  return ICEBLK_GIT_REVISION;
}

std::string full() {
  std::string s(project());
  if (!git_revision().empty()) s += " (git " + std::string(git_revision()) + ")";
  return s;
}

std::string openssl() {
  std::string s = OpenSSL_version(OPENSSL_VERSION);
  if (s != OPENSSL_VERSION_TEXT) s += " (built with " OPENSSL_VERSION_TEXT ")";
  return s;
}

std::string liburing() {
  // liburing 2.3 has no version call; the loaded library's file name carries it
  // (liburing.so.2 -> liburing.so.2.3). Look it up only if this process has it.
  void* sym = ::dlsym(RTLD_DEFAULT, "io_uring_queue_init");
  Dl_info info{};
  if (sym == nullptr || ::dladdr(sym, &info) == 0 || info.dli_fname == nullptr) return {};
  char real[PATH_MAX];
  const std::string path = ::realpath(info.dli_fname, real) != nullptr ? real : info.dli_fname;
  const std::string marker = "liburing.so.";
  const size_t at = path.rfind(marker);
  if (at == std::string::npos) return std::string(build_liburing());
  return path.substr(at + marker.size());
}

std::string_view build_liburing() {
  return ICEBLK_LIBURING_BUILD_VERSION;
}
std::string_view build_libsystemd() {
  return ICEBLK_LIBSYSTEMD_BUILD_VERSION;
}

std::string banner(std::string_view program) {
  std::string s = std::string(program) + " " + full() + "\n";
  s += openssl() + "\n";
  const std::string uring = liburing();
  if (uring.empty()) {
    s += "liburing: not used\n";
  } else {
    s += "liburing " + uring;
    if (uring != build_liburing()) s += " (built with " + std::string(build_liburing()) + ")";
    s += "\n";
  }
  if (!build_libsystemd().empty() && ::dlsym(RTLD_DEFAULT, "sd_notify") != nullptr) {
    s += "libsystemd " + std::string(build_libsystemd()) + " (build)\n";
  }
  s.pop_back();  // no final newline: callers print one
  return s;
}

}  // namespace iceblk::version
