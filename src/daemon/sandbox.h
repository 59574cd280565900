// iceblkd confines itself once its sockets are bound and its images are open
// (docs/iceblkd.md "Confinement", docs/threat-model.md):
//   1. not dumpable (PR_SET_DUMPABLE 0) from the start, unless --allow-core-dumps;
//   2. optionally --user/--group: setgroups, setgid, setuid, checked (no way back);
//   3. no_new_privs, and a seccomp-bpf allowlist (libseccomp) on every thread,
//      default action: kill the whole process.
// --no-sandbox (JSON "sandbox": false) skips 3, for debugging only.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "base/result.h"

namespace iceblk::daemon {

// A user/group to drop to, resolved at start-up (before anything is confined).
struct Identity {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string user;  // for messages
};

// `user` (name or number) and `group` (name or number; default: the user's primary
// group). Both empty: nullopt (keep the current identity). A group without a user
// changes only the group.
Result<std::optional<Identity>> resolve_identity(const std::string& user, const std::string& group);

// PR_SET_DUMPABLE: 0 unless core dumps are allowed. Also makes /proc/PID/* owned by
// root and refuses ptrace by the same user (root, CAP_SYS_PTRACE, still may).
Status set_dumpable(bool allow_core_dumps);

// Drops to `id` (if any), then (if `seccomp`) sets no_new_privs and loads the
// allowlist into every thread of the process (SCMP_FLTATR_CTL_TSYNC). Call once,
// after start-up. On error the daemon must not run on.
Status confine(const std::optional<Identity>& id, bool seccomp, bool allow_core_dumps);

// Testing only (tests/integration/daemon/sandbox_test.cc): when the environment
// names ICEBLK_TESTING_SECCOMP_PROBE_FILE and that file exists, the queue worker
// that calls this issues execve(2), which the filter forbids. A guest cannot create
// host files or set the daemon's environment. Cheap when the variable is unset.
void testing_seccomp_probe();

}  // namespace iceblk::daemon
