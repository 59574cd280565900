#include "daemon/systemd.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "base/log.h"

namespace iceblk::daemon {

namespace {

std::string bound_path(int fd) {
  sockaddr_un a{};
  socklen_t len = sizeof a;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0 || a.sun_family != AF_UNIX)
    return {};
  if (len <= offsetof(sockaddr_un, sun_path) || a.sun_path[0] == '\0')
    return {};  // unnamed or abstract
  return std::string(a.sun_path, strnlen(a.sun_path, len - offsetof(sockaddr_un, sun_path)));
}

std::string describe(const ListenFd& f) {
  return fmt::format("fd {} (FileDescriptorName={}{}{})", f.fd, f.name, f.path.empty() ? "" : ", ",
                     f.path);
}

}  // namespace

Result<std::vector<ListenFd>> take_listen_fds() {
  char** names = nullptr;
  const int n = sd_listen_fds_with_names(/*unset_environment=*/1, &names);
  if (n < 0)
    return tl::unexpected(
        errno_error(Errc::kInvalidArgument, "systemd socket activation (LISTEN_FDS)", -n));
  std::vector<ListenFd> out;
  for (int i = 0; i < n; ++i) {
    ListenFd f;
    f.fd = SD_LISTEN_FDS_START + i;
    f.name = names != nullptr && names[i] != nullptr ? names[i] : "unknown";
    f.path = bound_path(f.fd);
    ::fcntl(f.fd, F_SETFD, FD_CLOEXEC);
    out.push_back(std::move(f));
  }
  if (names != nullptr) {
    for (int i = 0; i < n; ++i) std::free(names[i]);
    std::free(names);
  }
  return out;
}

Status assign_listen_fds(DaemonConfig& cfg, std::vector<ListenFd> fds) {
  std::vector<bool> used(fds.size(), false);
  auto claim = [&](size_t i, ExportConfig& e, const char* how) {
    used[i] = true;
    e.listen_fd = fds[i].fd;
    if (!fds[i].path.empty() && !e.socket.empty() && e.socket != fds[i].path) {
      spdlog::warn(
          "export '{}': socket {} from the config, but systemd passed {}; serving the latter",
          e.name, e.socket, describe(fds[i]));
    }
    if (!fds[i].path.empty()) e.socket = fds[i].path;
    if (e.socket.empty()) e.socket = fmt::format("fd:{}", fds[i].fd);
    spdlog::debug("export '{}': serving the socket systemd passed, {} (matched by {})", e.name,
                  describe(fds[i]), how);
  };
  // "fd:N" naming a passed fd: that one is taken.
  for (auto& e : cfg.exports) {
    if (e.socket.rfind("fd:", 0) != 0) continue;
    ICEBLK_ASSIGN_OR_RETURN(const int fd, parse_fd_socket(e.socket));
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].fd == fd) used[i] = true;
    }
  }
  for (size_t pass = 0; pass < 2; ++pass) {
    for (size_t k = 0; k < cfg.exports.size(); ++k) {
      ExportConfig& e = cfg.exports[k];
      if (e.listen_fd >= 0 || e.socket.rfind("fd:", 0) == 0) continue;
      const std::string name = e.name.empty() ? fmt::format("export{}", k) : e.name;
      for (size_t i = 0; i < fds.size(); ++i) {
        if (used[i]) continue;
        if (pass == 0 && fds[i].name == name) {
          claim(i, e, "FileDescriptorName=");
          break;
        }
        if (pass == 1 && !e.socket.empty() && fds[i].path == e.socket) {
          claim(i, e, "socket path");
          break;
        }
      }
    }
  }
  for (size_t i = 0; i < fds.size(); ++i) {
    if (!used[i]) {
      return fail(Errc::kInvalidArgument,
                  "systemd passed a socket that no export uses: {} (FileDescriptorName= must be an "
                  "export's name, "
                  "or the socket bound to an export's socket path)",
                  describe(fds[i]));
    }
  }
  return {};
}

void notify_ready(const std::string& status) {
  sd_notifyf(/*unset_environment=*/0, "READY=1\nSTATUS=%s", status.c_str());
}

void notify_stopping(const std::string& status) {
  sd_notifyf(/*unset_environment=*/0, "STOPPING=1\nSTATUS=%s", status.c_str());
}

bool stderr_is_journal() {
  const char* js = std::getenv("JOURNAL_STREAM");
  if (js == nullptr) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(js, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return st.st_dev == dev && st.st_ino == ino;
}

}  // namespace iceblk::daemon
