#include "control/stats.h"

#include <fmt/format.h>

#include "blk/stats.h"

namespace iceblk::control {

using nlohmann::json;

namespace {

json queue_json(const blk::QueueStats& s, uint16_t q) {
  json requests = json::object(), bytes = json::object(), errors = json::object();
  for (size_t k = 0; k < blk::kStatKinds; ++k) {
    const std::string n(blk::stat_kind_name(k));
    requests[n] = s.requests[k].load(std::memory_order_relaxed);
    bytes[n] = s.bytes[k].load(std::memory_order_relaxed);
  }
  for (size_t e = 0; e < blk::kStatErrors; ++e) {
    errors[std::string(blk::stat_error_name(e))] = s.errors[e].load(std::memory_order_relaxed);
  }
  json buckets = json::array();
  uint64_t count = 0;
  for (size_t b = 0; b < blk::kLatencyBuckets; ++b) {
    const uint64_t n = s.latency[b].load(std::memory_order_relaxed);
    count += n;
    json jb = {{"count", n}};
    if (b < blk::kLatencyBoundsUs.size()) {
      jb["le-us"] = blk::kLatencyBoundsUs[b];
    } else {
      jb["le-us"] = "+Inf";
    }
    buckets.push_back(std::move(jb));
  }
  return json{{"queue", q},
              {"requests", std::move(requests)},
              {"bytes", std::move(bytes)},
              {"errors", std::move(errors)},
              {"bytes-encrypted", s.bytes_encrypted.load(std::memory_order_relaxed)},
              {"bytes-decrypted", s.bytes_decrypted.load(std::memory_order_relaxed)},
              {"requests-encrypted", s.requests_encrypted.load(std::memory_order_relaxed)},
              {"requests-decrypted", s.requests_decrypted.load(std::memory_order_relaxed)},
              {"latency", json{{"count", count},
                               {"sum-ns", s.latency_sum_ns.load(std::memory_order_relaxed)},
                               {"buckets", std::move(buckets)}}}};
}

// Label values are export names (validated config strings); escape per the format.
std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

json stats_json(const std::vector<daemon::ExportView>& exports) {
  json list = json::array();
  for (const auto& v : exports) {
    json queues = json::array();
    for (uint16_t q = 0; q < v.cfg.num_queues; ++q) queues.push_back(queue_json(v.device->queue_stats(q), q));
    list.push_back(json{{"name", v.cfg.name},
                        {"keys-programmed", v.keys_programmed},
                        {"keys-evicted", v.keys_evicted},
                        {"connections", v.connections},
                        {"queues", std::move(queues)}});
  }
  return json{{"exports", std::move(list)}};
}

std::string stats_prometheus(const std::vector<daemon::ExportView>& exports) {
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto each_queue = [&](auto&& fn) {
    for (const auto& v : exports) {
      const std::string ex = escape_label(v.cfg.name);
      for (uint16_t q = 0; q < v.cfg.num_queues; ++q) fn(ex, q, v.device->queue_stats(q));
    }
  };
  family("iceblk_requests_total", "counter", "Requests completed, by type.");
  each_queue([&](const std::string& ex, uint16_t q, const blk::QueueStats& s) {
    for (size_t k = 0; k < blk::kStatKinds; ++k) {
      out += fmt::format("iceblk_requests_total{{export=\"{}\",queue=\"{}\",type=\"{}\"}} {}\n", ex, q,
                         blk::stat_kind_name(k), s.requests[k].load(std::memory_order_relaxed));
    }
  });
  family("iceblk_bytes_total", "counter", "Bytes moved by successful requests, by type.");
  each_queue([&](const std::string& ex, uint16_t q, const blk::QueueStats& s) {
    for (size_t k = 0; k < blk::kStatKinds; ++k) {
      out += fmt::format("iceblk_bytes_total{{export=\"{}\",queue=\"{}\",type=\"{}\"}} {}\n", ex, q,
                         blk::stat_kind_name(k), s.bytes[k].load(std::memory_order_relaxed));
    }
  });
  family("iceblk_errors_total", "counter", "Requests completed with an error, by status.");
  each_queue([&](const std::string& ex, uint16_t q, const blk::QueueStats& s) {
    for (size_t e = 0; e < blk::kStatErrors; ++e) {
      out += fmt::format("iceblk_errors_total{{export=\"{}\",queue=\"{}\",status=\"{}\"}} {}\n", ex, q,
                         blk::stat_error_name(e), s.errors[e].load(std::memory_order_relaxed));
    }
  });
  family("iceblk_crypt_bytes_total", "counter", "Bytes encrypted (writes) and decrypted (reads) by the engine.");
  each_queue([&](const std::string& ex, uint16_t q, const blk::QueueStats& s) {
    out += fmt::format("iceblk_crypt_bytes_total{{export=\"{}\",queue=\"{}\",direction=\"encrypt\"}} {}\n", ex, q,
                       s.bytes_encrypted.load(std::memory_order_relaxed));
    out += fmt::format("iceblk_crypt_bytes_total{{export=\"{}\",queue=\"{}\",direction=\"decrypt\"}} {}\n", ex, q,
                       s.bytes_decrypted.load(std::memory_order_relaxed));
  });
  family("iceblk_request_duration_seconds", "histogram", "Request latency, from pop to completion.");
  each_queue([&](const std::string& ex, uint16_t q, const blk::QueueStats& s) {
    uint64_t cumulative = 0;
    for (size_t b = 0; b < blk::kLatencyBuckets; ++b) {
      cumulative += s.latency[b].load(std::memory_order_relaxed);
      const std::string le =
          b < blk::kLatencyBoundsUs.size() ? fmt::format("{}", double(blk::kLatencyBoundsUs[b]) / 1e6) : "+Inf";
      out += fmt::format("iceblk_request_duration_seconds_bucket{{export=\"{}\",queue=\"{}\",le=\"{}\"}} {}\n", ex,
                         q, le, cumulative);
    }
    out += fmt::format("iceblk_request_duration_seconds_sum{{export=\"{}\",queue=\"{}\"}} {}\n", ex, q,
                       double(s.latency_sum_ns.load(std::memory_order_relaxed)) / 1e9);
    out += fmt::format("iceblk_request_duration_seconds_count{{export=\"{}\",queue=\"{}\"}} {}\n", ex, q,
                       cumulative);
  });
  family("iceblk_keys_programmed_total", "counter", "Keys programmed into the export's slots.");
  for (const auto& v : exports) {
    out += fmt::format("iceblk_keys_programmed_total{{export=\"{}\"}} {}\n", escape_label(v.cfg.name),
                       v.keys_programmed);
  }
  family("iceblk_keys_evicted_total", "counter", "Keys evicted (and zeroised) from the export's slots.");
  for (const auto& v : exports) {
    out += fmt::format("iceblk_keys_evicted_total{{export=\"{}\"}} {}\n", escape_label(v.cfg.name), v.keys_evicted);
  }
  family("iceblk_export_connected", "gauge", "1 while a front-end is connected.");
  for (const auto& v : exports) {
    out += fmt::format("iceblk_export_connected{{export=\"{}\"}} {}\n", escape_label(v.cfg.name),
                       v.connected ? 1 : 0);
  }
  return out;
}

}  // namespace iceblk::control
