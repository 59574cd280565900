#include "daemon/journal_sink.h"

#include <sys/uio.h>
#include <syslog.h>
#include <unistd.h>
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <spdlog/sinks/base_sink.h>
#include <systemd/sd-journal.h>

#include <mutex>
#include <vector>

#include "base/log_context.h"

namespace iceblk::daemon {

namespace {

int priority_of(spdlog::level::level_enum l) {
  switch (l) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return LOG_DEBUG;
    case spdlog::level::info:
      return LOG_INFO;
    case spdlog::level::warn:
      return LOG_WARNING;
    case spdlog::level::err:
      return LOG_ERR;
    case spdlog::level::critical:
      return LOG_CRIT;
    default:
      return LOG_INFO;
  }
}

class JournalSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit JournalSink(std::string ident) : ident_(std::move(ident)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::vector<std::string> fields;
    fields.reserve(10);
    fields.push_back("MESSAGE=" + std::string(msg.payload.data(), msg.payload.size()));
    fields.push_back(fmt::format("PRIORITY={}", priority_of(msg.level)));
    fields.push_back("SYSLOG_IDENTIFIER=" + ident_);
    fields.push_back("ICEBLK_LOGGER=" +
                     std::string(msg.logger_name.data(), msg.logger_name.size()));
    fields.push_back(fmt::format("TID={}", msg.thread_id));
    const log::Context& ctx = log::thread_context();
    if (!ctx.export_name.empty()) fields.push_back("ICEBLK_EXPORT=" + ctx.export_name);
    if (ctx.queue >= 0) fields.push_back(fmt::format("ICEBLK_QUEUE={}", ctx.queue));
    if (!msg.source.empty()) {
      fields.push_back(fmt::format("CODE_FILE={}", msg.source.filename));
      fields.push_back(fmt::format("CODE_LINE={}", msg.source.line));
      if (msg.source.funcname != nullptr)
        fields.push_back(fmt::format("CODE_FUNC={}", msg.source.funcname));
    }
    std::vector<iovec> iov(fields.size());
    for (size_t i = 0; i < fields.size(); ++i) iov[i] = {fields[i].data(), fields[i].size()};
    // The journal may be gone (journald restarting): a record is then lost, and
    // the daemon must not stop over it.
    (void)sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
  }
  void flush_() override {}

 private:
  std::string ident_;
};

}  // namespace

std::shared_ptr<spdlog::sinks::sink> make_journal_sink(std::string syslog_identifier) {
  return std::make_shared<JournalSink>(std::move(syslog_identifier));
}

}  // namespace iceblk::daemon
