// An spdlog sink that writes each record to the systemd journal (sd_journal_sendv)
// with its priority and structured fields:
//   MESSAGE, PRIORITY (from the level), SYSLOG_IDENTIFIER (the program),
//   ICEBLK_LOGGER (iceblkd, secure_world.audit), ICEBLK_EXPORT and ICEBLK_QUEUE
//   (from the thread's log context, base/log_context.h, when set), TID,
//   CODE_FILE/CODE_LINE/CODE_FUNC when spdlog knows them.
// Messages are written as they are: they never carry key bytes (SecretBytes has no
// formatter), and this sink adds only the fields above.
#pragma once

#include <spdlog/sinks/sink.h>

#include <memory>
#include <string>

namespace iceblk::daemon {

std::shared_ptr<spdlog::sinks::sink> make_journal_sink(std::string syslog_identifier);

}  // namespace iceblk::daemon
