// What `--version` prints: the project version, the git revision when built from a
// git checkout, and the versions of the libraries in use (OpenSSL, liburing,
// libsystemd), as loaded at run time where the library can say so.
#pragma once

#include <string>
#include <string_view>

namespace iceblk::version {

// "0.1.0" (CMake's project(VERSION)).
std::string_view project();
// "e32a988c1f2b", "e32a988c1f2b-dirty", or "" when not built from git.
std::string_view git_revision();
// "0.1.0 (git e32a988c1f2b)" or "0.1.0".
std::string full();

// "OpenSSL 3.0.19 27 Jan 2026" as reported by the loaded libcrypto.
std::string openssl();
// "2.3" for the loaded liburing (from its file name), or "" when this process has
// not loaded liburing. build_liburing(): the version it was compiled against.
std::string liburing();
std::string_view build_liburing();
// The libsystemd version iceblk was compiled against ("252"), "" if none.
std::string_view build_libsystemd();

// The whole text, one item a line:
//   iceblkd 0.1.0 (git e32a988c1f2b)
//   OpenSSL 3.0.19 27 Jan 2026
//   liburing 2.3
//   libsystemd 252 (build)
std::string banner(std::string_view program);  // no final newline

}  // namespace iceblk::version
