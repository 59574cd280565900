// iceblkd under systemd: sockets handed in by socket activation, readiness and
// stop notifications (Type=notify), and whether stderr is connected to the journal.
// Every call is harmless outside systemd (no LISTEN_FDS, no NOTIFY_SOCKET).
#pragma once

#include <string>
#include <vector>

#include "base/result.h"
#include "daemon/config.h"

namespace iceblk::daemon {

// A listening socket passed by systemd (LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES).
struct ListenFd {
  int fd = -1;
  std::string name;  // FileDescriptorName= ("unknown" if the unit set none)
  std::string path;  // the unix socket path it is bound to, "" if none
};

// Takes the sockets systemd passed to this process (sd_listen_fds_with_names) and
// unsets the LISTEN_* variables, so nothing started later sees them. Each fd gets
// FD_CLOEXEC. Empty when the process was not socket-activated.
Result<std::vector<ListenFd>> take_listen_fds();

// Give each export its socket from `fds`, in this order of preference:
//   - an export whose `socket` is "fd:N" already has one (N must not be a passed fd
//     that another export also claims);
//   - the passed fd whose FileDescriptorName= equals the export's name;
//   - the passed fd bound to the export's socket path (a socket unit with several
//     ListenStream= lines shares one name).
// An export left without one binds its socket path as usual. A name-matched export
// may omit "socket": it takes the fd's path (or "fd:N"). Every passed fd must be
// used by exactly one export; otherwise an error names it (a socket nobody serves
// would leave front-ends hanging).
Status assign_listen_fds(DaemonConfig& cfg, std::vector<ListenFd> fds);

// sd_notify: "READY=1\nSTATUS=...", "STOPPING=1", "STATUS=...". No-ops without
// NOTIFY_SOCKET.
void notify_ready(const std::string& status);
void notify_stopping(const std::string& status);

// True when JOURNAL_STREAM names the file stderr is connected to (systemd's
// StandardError=journal): then log records should go to the journal natively.
bool stderr_is_journal();

}  // namespace iceblk::daemon
