#include "daemon/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <vector>

#include "base/sanitizers.h"

namespace iceblk::daemon {

namespace {

// Set once the seccomp filter is loaded; read by the LeakSanitizer hook below.
std::atomic<bool> g_seccomp_loaded{false};

// --- The allowlist ------------------------------------------------------------------
// Everything iceblkd does after start-up, grouped by purpose. A syscall that is not
// here (or not allowed with these arguments below) kills the whole process
// (SCMP_ACT_KILL_PROCESS): execve, fork, ptrace, mount, bpf, setuid, ... New code that
// needs another syscall adds it to the group it belongs to, with its reason.
// Names unknown on the build architecture are skipped.
struct Group {
  const char* purpose;
  std::initializer_list<const char*> syscalls;
};

const Group kAllowed[] = {
    {"memory: malloc, guest memory regions (mmap of the front-end's memfds), the key arena "
     "(mlock), "
     "inflight regions, the SIGBUS guard's zero pages over cut guest memory (memory/fault_guard.h)",
     {"brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mlock", "mlock2", "munlock",
      "membarrier"}},
    {"threads: std::thread (clone with CLONE_THREAD only, below), mutexes, thread exit",
     {"set_robust_list", "get_robust_list", "rseq", "futex", "futex_waitv", "set_tid_address",
      "gettid", "getpid", "exit", "exit_group", "sched_yield", "sched_getaffinity",
      "sched_getparam", "sched_getscheduler", "getrandom"}},
    {"time and sleeping (spdlog timestamps, condition-variable timeouts, poll loops)",
     {"clock_gettime", "clock_getres", "clock_nanosleep", "gettimeofday", "time", "nanosleep"}},
    {"image and descriptor I/O: the file back-end (sync engine), socket and eventfd reads/writes",
     {"read",      "write",     "readv",           "writev",   "pread64",     "pwrite64",
      "preadv",    "pwritev",   "preadv2",         "pwritev2", "lseek",       "fsync",
      "fdatasync", "fallocate", "sync_file_range", "close",    "close_range", "dup",
      "dup2",      "dup3",      "fcntl",           "flock"}},
    {"files: images and sockets opened at runtime (QMP add-export), socket files removed on "
     "remove-export "
     "and shutdown, realpath/stat",
     {"open",       "openat",   "creat",      "stat",     "lstat",  "fstat",
      "newfstatat", "statx",    "statfs",     "fstatfs",  "access", "faccessat",
      "faccessat2", "readlink", "readlinkat", "getcwd",   "unlink", "unlinkat",
      "ftruncate",  "chmod",    "fchmod",     "fchmodat", "umask",  "getdents64"}},
    {"io_uring: the io_uring file engine (its reads/writes run in the kernel, not through this "
     "filter)",
     {"io_uring_setup", "io_uring_enter", "io_uring_register"}},
    {"sockets: vhost-user (SCM_RIGHTS guest memory and eventfds), the secure-world channels, the "
     "QMP control "
     "socket, journald (socket(AF_UNIX) only, below)",
     {"bind", "listen", "accept", "accept4", "connect", "recvmsg", "sendmsg", "recvmmsg",
      "sendmmsg", "recvfrom", "sendto", "shutdown", "getsockopt", "setsockopt", "getsockname",
      "getpeername"}},
    {"event loops and notifications: epoll (vhost-user sessions, secure world, QMP), poll, vring "
     "kick/call "
     "eventfds, pipes",
     {"epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
      "poll", "ppoll", "select", "pselect6", "eventfd", "eventfd2", "pipe", "pipe2",
      "timerfd_create", "timerfd_settime", "timerfd_gettime"}},
    {"memfds: sealed guest-memory checks (fcntl F_GET_SEALS), inflight regions, journald's large "
     "messages",
     {"memfd_create"}},
    {"signals and shutdown: sigwait in main, SIGPIPE ignored, abort(), the SIGBUS guard (its "
     "handler is installed when the first guest memory is mapped, after the filter; a SIGBUS "
     "it does not contain is raised again through tgkill, allowed below)",
     {"rt_sigprocmask", "rt_sigaction", "rt_sigreturn", "rt_sigtimedwait", "rt_sigpending",
      "sigaltstack", "restart_syscall"}},
    {"identity and limits: logging and the journal read them",
     {"getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups", "getppid",
      "uname", "prlimit64", "getrlimit", "sysinfo"}},
};

Status seccomp_error(const char* what, int rc) {
  return fail(Errc::kIo, "sandbox: {} failed: {}", what, std::strerror(-rc));
}

// The allowlist, plus the rules that look at arguments.
Status load_filter() {
  std::unique_ptr<void, void (*)(scmp_filter_ctx)> ctx(seccomp_init(SCMP_ACT_KILL_PROCESS),
                                                       seccomp_release);
  if (!ctx) return fail(Errc::kIo, "sandbox: seccomp_init failed");
  scmp_filter_ctx c = ctx.get();
  // Every thread (the export, worker, secure-world and QMP threads already run).
  if (int rc = seccomp_attr_set(c, SCMP_FLTATR_CTL_TSYNC, 1); rc != 0)
    return seccomp_error("TSYNC", rc);
  for (const Group& g : kAllowed) {
    for (const char* name : g.syscalls) {
      const int nr = seccomp_syscall_resolve_name(name);
      if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
      if (int rc = seccomp_rule_add(c, SCMP_ACT_ALLOW, nr, 0); rc != 0)
        return seccomp_error(name, rc);
    }
  }
  auto add = [&](const char* what, int rc) -> Status {
    if (rc != 0) return seccomp_error(what, rc);
    return {};
  };
  // Threads, never processes: clone only with CLONE_THREAD. clone3 passes its flags
  // in memory the filter cannot read, so it fails with ENOSYS and glibc falls back
  // to clone.
  ICEBLK_TRY(
      add("clone", seccomp_rule_add(c, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                                    SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD))));
  ICEBLK_TRY(add("clone3", seccomp_rule_add(c, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0)));
  // Sockets: unix domain (vhost-user, secure world, QMP, journald), and the network
  // families of remote images (nbd://, rbd: through librados' messenger threads,
  // which open OSD connections at any time; getaddrinfo's netlink query for
  // nbd://HOST). An export can be added at runtime (QMP), so they are always allowed.
  for (int family : {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK}) {
    ICEBLK_TRY(add("socket", seccomp_rule_add(c, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                                              SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(family)))));
  }
  ICEBLK_TRY(add("socketpair", seccomp_rule_add(c, SCMP_ACT_ALLOW, SCMP_SYS(socketpair), 1,
                                                SCMP_A0(SCMP_CMP_EQ, AF_UNIX))));
  // Signals to ourselves only: QMP "quit" sends SIGTERM to the daemon, abort() raises.
  const auto self = static_cast<scmp_datum_t>(::getpid());
  ICEBLK_TRY(add(
      "kill", seccomp_rule_add(c, SCMP_ACT_ALLOW, SCMP_SYS(kill), 1, SCMP_A0(SCMP_CMP_EQ, self))));
  ICEBLK_TRY(add("tgkill", seccomp_rule_add(c, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1,
                                            SCMP_A0(SCMP_CMP_EQ, self))));
  // ioctl: a block device's size (image opened at runtime), isatty (the stderr log
  // sink), non-blocking and close-on-exec toggles.
  for (unsigned long req :
       {static_cast<unsigned long>(BLKGETSIZE64), static_cast<unsigned long>(BLKSSZGET),
        static_cast<unsigned long>(TCGETS), static_cast<unsigned long>(FIONBIO),
        static_cast<unsigned long>(FIOCLEX), static_cast<unsigned long>(FIONREAD)}) {
    ICEBLK_TRY(add("ioctl", seccomp_rule_add(c, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
                                             SCMP_A1(SCMP_CMP_EQ, req))));
  }
  // prctl: thread names (std::thread users, spdlog) only.
  for (int op : {PR_SET_NAME, PR_GET_NAME, PR_GET_DUMPABLE}) {
    ICEBLK_TRY(add("prctl", seccomp_rule_add(c, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
                                             SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(op)))));
  }
  // seccomp_load also sets no_new_privs (SCMP_FLTATR_CTL_NNP, on by default).
  if (int rc = seccomp_load(c); rc != 0) return seccomp_error("seccomp_load", rc);
  return {};
}

Result<uint32_t> parse_id(const std::string& s) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return fail(Errc::kNotFound, "not a number");
  return v;
}

}  // namespace

Result<std::optional<Identity>> resolve_identity(const std::string& user,
                                                 const std::string& group) {
  if (user.empty() && group.empty()) return std::optional<Identity>{};
  Identity id;
  id.uid = ::getuid();
  id.gid = ::getgid();
  if (!user.empty()) {
    const passwd* pw = ::getpwnam(user.c_str());
    if (pw == nullptr) {
      auto n = parse_id(user);
      if (!n) return fail(Errc::kNotFound, "--user {}: no such user", user);
      pw = ::getpwuid(*n);
      id.uid = *n;
      id.gid = pw != nullptr ? pw->pw_gid : *n;
    } else {
      id.uid = pw->pw_uid;
      id.gid = pw->pw_gid;
    }
    id.user = user;
  }
  if (!group.empty()) {
    const struct group* gr = ::getgrnam(group.c_str());
    if (gr != nullptr) {
      id.gid = gr->gr_gid;
    } else {
      auto n = parse_id(group);
      if (!n) return fail(Errc::kNotFound, "--group {}: no such group", group);
      id.gid = *n;
    }
  }
  if (id.user.empty()) id.user = std::to_string(id.uid);
  return std::optional<Identity>{id};
}

Status set_dumpable(bool allow_core_dumps) {
  if (::prctl(PR_SET_DUMPABLE, allow_core_dumps ? 1 : 0, 0, 0, 0) != 0) {
    return tl::unexpected(errno_error(Errc::kIo, "prctl(PR_SET_DUMPABLE)", errno));
  }
  return {};
}

Status confine(const std::optional<Identity>& id, bool seccomp, bool allow_core_dumps) {
  if (id) {
    // Supplementary groups first (needs root), then the group, then the user; glibc
    // applies each to every thread. Then check that there is no way back.
    const gid_t gid = id->gid;
    if (::setgroups(1, &gid) != 0)
      return tl::unexpected(errno_error(Errc::kPermissionDenied, "setgroups", errno));
    if (::setresgid(gid, gid, gid) != 0)
      return tl::unexpected(errno_error(Errc::kPermissionDenied, "setgid", errno));
    if (::setresuid(id->uid, id->uid, id->uid) != 0) {
      return tl::unexpected(errno_error(Errc::kPermissionDenied, "setuid", errno));
    }
    uid_t r = 0, e = 0, s = 0;
    gid_t rg = 0, eg = 0, sg = 0;
    if (::getresuid(&r, &e, &s) != 0 || r != id->uid || e != id->uid || s != id->uid ||
        ::getresgid(&rg, &eg, &sg) != 0 || rg != gid || eg != gid || sg != gid) {
      return fail(Errc::kPermissionDenied, "dropping to user {} did not take effect", id->user);
    }
    if (id->uid != 0 && ::setuid(0) == 0)
      return fail(Errc::kPermissionDenied, "could regain root after dropping it");
    // A change of credentials resets the dumpable flag: set it again.
    ICEBLK_TRY(set_dumpable(allow_core_dumps));
  }
  if (!seccomp) return {};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return tl::unexpected(errno_error(Errc::kIo, "prctl(PR_SET_NO_NEW_PRIVS)", errno));
  }
  ICEBLK_TRY(load_filter());
  g_seccomp_loaded.store(true, std::memory_order_release);
  return {};
}

void testing_seccomp_probe() {
  static const char* const file = std::getenv("ICEBLK_TESTING_SECCOMP_PROBE_FILE");
  if (file == nullptr || ::access(file, F_OK) != 0) return;
  char arg0[] = "/nonexistent/iceblk-testing-seccomp-probe";  // harmless without a filter
  char* argv[] = {arg0, nullptr};
  ::execve(arg0, argv, nullptr);  // the filter kills the process here
  spdlog::error("testing seccomp probe: execve returned (no sandbox?): {}", std::strerror(errno));
}

}  // namespace iceblk::daemon

#if ICEBLK_ASAN
// LeakSanitizer's exit-time check stops the world: it clones a tracer task (no
// CLONE_THREAD) that ptrace-attaches to every thread. The filter kills the process at
// that clone, so a confined daemon built with ASan would die of SIGSYS at every exit.
// LSan calls this hook first: the check is skipped in a process the filter confines
// (the in-process tests and an --no-sandbox daemon keep theirs).
extern "C" int __lsan_is_turned_off() {
  return iceblk::daemon::g_seccomp_loaded.load(std::memory_order_acquire) ? 1 : 0;
}
#endif
