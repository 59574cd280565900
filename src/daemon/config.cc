#include "daemon/config.h"

#include <charconv>
#include <fstream>
#include <iterator>
#include <set>

#include <nlohmann/json.hpp>

#include "base/checked.h"
#include "base/parse_size.h"
#include "base/strong_types.h"
#include "ice/engine.h"

namespace iceblk::daemon {

namespace {

// parse_size() for a config value: every refusal of a config is kInvalidArgument
// (config.h), so a size too large for 64 bits (parse_size's kOverflow) is a bad value
// like any other; the message is parse_size's ("... is too large"). Found by fuzz_config.
Result<uint64_t> config_size(std::string_view text, std::string_view what) {
  auto bytes = parse_size(text, what);
  if (!bytes && bytes.error().code == Errc::kOverflow) {
    return tl::unexpected(Error(Errc::kInvalidArgument, std::move(bytes.error().message)));
  }
  return bytes;
}

}  // namespace

Result<uint64_t> parse_image_size(std::string_view text, std::string_view what) {
  ICEBLK_ASSIGN_OR_RETURN(const uint64_t bytes, config_size(text, what));
  if (bytes == 0) return fail(Errc::kInvalidArgument, "{}: size must not be 0", what);
  if (bytes % kSectorSize != 0) {
    return fail(Errc::kInvalidArgument, "{}: {} bytes is not a multiple of 512", what, bytes);
  }
  return bytes;
}

Result<int> parse_fd_socket(std::string_view text) {
  int fd = -1;
  const std::string_view num = text.substr(3);
  auto [ptr, ec] = std::from_chars(num.data(), num.data() + num.size(), fd);
  if (text.rfind("fd:", 0) != 0 || num.empty() || ec != std::errc() || ptr != num.data() + num.size() || fd < 0) {
    return fail(Errc::kInvalidArgument, "socket '{}': use fd:N with N a file descriptor number", text);
  }
  return fd;
}

Result<backend::StorageErrorPolicy> parse_storage_error_policy(std::string_view text) {
  if (text == "retry") return backend::StorageErrorPolicy::kRetry;
  if (text == "fail") return backend::StorageErrorPolicy::kFail;
  return fail(Errc::kInvalidArgument,
              "on_storage_error (--on-storage-error) must be retry or fail, not '{}'", text);
}

Result<std::vector<std::pair<ice::Algorithm, ice::KeySize>>> parse_algorithm_list(std::string_view text) {
  std::vector<std::pair<ice::Algorithm, ice::KeySize>> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view item = text.substr(pos, comma - pos);
    if (!item.empty()) {
      auto a = ice::parse_algorithm(item);
      if (!a) return fail(Errc::kInvalidArgument, "--algorithms: {}", a.error().message);
      out.push_back(*a);
    }
    pos = comma + 1;
  }
  if (out.empty()) return fail(Errc::kInvalidArgument, "--algorithms: empty list");
  return out;
}

namespace {

using nlohmann::json;

template <typename T>
Status get_uint(const json& j, const char* key, T& out, const std::string& where) {
  if (!j.contains(key)) return {};
  const json& v = j.at(key);
  if (!v.is_number_unsigned() || v.get<uint64_t>() > std::numeric_limits<T>::max()) {
    return fail(Errc::kInvalidArgument, "{}: '{}' must be an unsigned integer <= {}", where, key,
                std::numeric_limits<T>::max());
  }
  out = static_cast<T>(v.get<uint64_t>());
  return {};
}

Status get_string(const json& j, const char* key, std::string& out, const std::string& where) {
  if (!j.contains(key)) return {};
  if (!j.at(key).is_string()) return fail(Errc::kInvalidArgument, "{}: '{}' must be a string", where, key);
  out = j.at(key).get<std::string>();
  return {};
}

Status get_bool(const json& j, const char* key, bool& out, const std::string& where) {
  if (!j.contains(key)) return {};
  if (!j.at(key).is_boolean()) return fail(Errc::kInvalidArgument, "{}: '{}' must be true or false", where, key);
  out = j.at(key).get<bool>();
  return {};
}

Status check_keys(const json& j, std::initializer_list<const char*> known, const std::string& where) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool ok = false;
    for (const char* k : known) ok = ok || it.key() == k;
    if (!ok) return fail(Errc::kInvalidArgument, "{}: unknown field '{}'", where, it.key());
  }
  return {};
}

// A byte count: an integer, or a size string ("4M", base/parse_size.h).
Status get_memory_size(const json& j, const char* key, uint64_t& out, const std::string& where) {
  if (!j.contains(key)) return {};
  if (j.at(key).is_string()) {
    ICEBLK_ASSIGN_OR_RETURN(out, config_size(j.at(key).get<std::string>(), fmt::format("{}.{}", where, key)));
    return {};
  }
  return get_uint(j, key, out, where);
}

Result<ExportConfig> parse_export(const json& j, const std::string& where) {
  if (!j.is_object()) return fail(Errc::kInvalidArgument, "{}: must be an object", where);
  ICEBLK_TRY(check_keys(j, {"name", "socket", "image", "size", "readonly", "num_queues", "queue_size", "ice",
                            "keys", "slot_offset", "max_slots", "algorithms", "secure_world_socket",
                            "io_engine", "serial", "allow_unsealed_memory", "max_buffer_memory", "test_hold",
                            "poll_us", "on_storage_error", "io_timeout"},
                        where));
  ExportConfig e;
  ICEBLK_TRY(get_string(j, "name", e.name, where));
  ICEBLK_TRY(get_string(j, "socket", e.socket, where));
  ICEBLK_TRY(get_string(j, "image", e.image, where));
  if (j.contains("size")) {
    if (j["size"].is_string()) {
      ICEBLK_ASSIGN_OR_RETURN(e.size, parse_image_size(j["size"].get<std::string>(), where + ".size"));
    } else {
      ICEBLK_TRY(get_uint(j, "size", e.size, where));
      if (e.size == 0 || e.size % kSectorSize != 0) {
        return fail(Errc::kInvalidArgument, "{}: size must be a non-zero multiple of 512", where);
      }
    }
  }
  ICEBLK_TRY(get_bool(j, "readonly", e.read_only, where));
  ICEBLK_TRY(get_bool(j, "allow_unsealed_memory", e.allow_unsealed_memory, where));
  ICEBLK_TRY(get_uint(j, "num_queues", e.num_queues, where));
  ICEBLK_TRY(get_uint(j, "queue_size", e.queue_size, where));
  ICEBLK_TRY(get_bool(j, "ice", e.ice, where));
  std::string keys = "inband";
  ICEBLK_TRY(get_string(j, "keys", keys, where));
  if (keys == "inband") {
    e.keys = blk::KeyMode::kInBand;
  } else if (keys == "secure-world") {
    e.keys = blk::KeyMode::kOutOfBand;
  } else {
    return fail(Errc::kInvalidArgument, "{}: keys must be \"inband\" or \"secure-world\", not \"{}\"", where, keys);
  }
  ICEBLK_TRY(get_uint(j, "slot_offset", e.slot_offset, where));
  ICEBLK_TRY(get_uint(j, "max_slots", e.max_slots, where));
  if (j.contains("algorithms")) {
    const json& a = j["algorithms"];
    if (!a.is_array()) return fail(Errc::kInvalidArgument, "{}: algorithms must be an array of names", where);
    std::string joined;
    for (const auto& item : a) {
      if (!item.is_string()) return fail(Errc::kInvalidArgument, "{}: algorithms must be strings", where);
      joined += item.get<std::string>() + ",";
    }
    ICEBLK_ASSIGN_OR_RETURN(e.algorithms, parse_algorithm_list(joined));
  }
  ICEBLK_TRY(get_string(j, "secure_world_socket", e.secure_world_socket, where));
  std::string engine = "auto";
  ICEBLK_TRY(get_string(j, "io_engine", engine, where));
  if (engine == "auto") {
    e.io_engine = backend::FileEngine::kAuto;
  } else if (engine == "io_uring") {
    e.io_engine = backend::FileEngine::kIoUring;
  } else if (engine == "sync") {
    e.io_engine = backend::FileEngine::kSync;
  } else {
    return fail(Errc::kInvalidArgument, "{}: io_engine must be auto, io_uring or sync", where);
  }
  ICEBLK_TRY(get_string(j, "serial", e.serial, where));
  ICEBLK_TRY(get_memory_size(j, "max_buffer_memory", e.max_buffer_memory, where));
  if (j.contains("test_hold")) {
    // TESTING ONLY (docs/iceblkd.md): "EVERY[:RELEASE_AFTER[:MAX_MS]]".
    if (!j["test_hold"].is_string()) {
      return fail(Errc::kInvalidArgument,
                  "{}: test_hold must be a string \"EVERY[:RELEASE_AFTER[:MAX_MS]]\"", where);
    }
    ICEBLK_ASSIGN_OR_RETURN(
        e.test_hold, blk::parse_completion_hold(j["test_hold"].get<std::string>())
                         .map_error([&](const Error& err) {
                           return make_error(err.code, "{}: test_hold: {}", where, err.message);
                         }));
  }
  if (j.contains("poll_us")) {
    uint32_t us = 0;
    ICEBLK_TRY(get_uint(j, "poll_us", us, where));
    e.poll_us = us;
  }
  if (!e.image.empty()) {
    auto spec = backend::parse_image_spec(e.image);
    if (!spec) return fail(spec.error().code, "{}: {}", where, spec.error().message);
  }
  std::string policy = "retry";
  ICEBLK_TRY(get_string(j, "on_storage_error", policy, where));
  auto p = parse_storage_error_policy(policy);
  if (!p) return fail(p.error().code, "{}: {}", where, p.error().message);
  e.on_storage_error = *p;
  ICEBLK_TRY(get_uint(j, "io_timeout", e.io_timeout_s, where));
  return e;
}

}  // namespace

Result<DaemonConfig> load_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return fail(Errc::kNotFound, "config file {}: cannot open", path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return fail(Errc::kIo, "config file {}: read failed", path);
  return parse_config_text(text, path);
}

Result<DaemonConfig> parse_config_text(std::string_view text, const std::string& path) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  if (j.is_discarded()) return fail(Errc::kInvalidArgument, "config file {}: not valid JSON", path);
  if (!j.is_object()) return fail(Errc::kInvalidArgument, "config file {}: top level must be an object", path);
  ICEBLK_TRY(check_keys(j, {"engine", "exports", "control", "sandbox", "allow_core_dumps", "user", "group", "poll_us"},
                        path));
  DaemonConfig cfg;
  ICEBLK_TRY(get_string(j, "control", cfg.control_socket, path));
  ICEBLK_TRY(get_bool(j, "sandbox", cfg.sandbox, path));
  ICEBLK_TRY(get_bool(j, "allow_core_dumps", cfg.allow_core_dumps, path));
  ICEBLK_TRY(get_string(j, "user", cfg.user, path));
  ICEBLK_TRY(get_string(j, "group", cfg.group, path));
  ICEBLK_TRY(get_uint(j, "poll_us", cfg.poll_us, path));
  if (j.contains("engine")) {
    const json& e = j["engine"];
    const std::string where = path + ": engine";
    if (!e.is_object()) return fail(Errc::kInvalidArgument, "{}: must be an object", where);
    ICEBLK_TRY(check_keys(e, {"num_slots", "allow_ecb", "buffer_memory", "crypt_threads"}, where));
    ICEBLK_TRY(get_uint(e, "num_slots", cfg.num_slots, where));
    ICEBLK_TRY(get_bool(e, "allow_ecb", cfg.allow_ecb, where));
    ICEBLK_TRY(get_memory_size(e, "buffer_memory", cfg.engine_buffer_memory, where));
    ICEBLK_TRY(get_uint(e, "crypt_threads", cfg.crypt_threads, where));
  }
  // With a control socket the daemon may start with no export and get them at runtime.
  const bool may_be_empty = !cfg.control_socket.empty() && (!j.contains("exports") || j["exports"].is_array());
  if (!may_be_empty && (!j.contains("exports") || !j["exports"].is_array() || j["exports"].empty())) {
    return fail(Errc::kInvalidArgument, "config file {}: 'exports' must be a non-empty array", path);
  }
  if (!j.contains("exports")) return cfg;
  size_t i = 0;
  for (const auto& item : j["exports"]) {
    ICEBLK_ASSIGN_OR_RETURN(ExportConfig e, parse_export(item, fmt::format("{}: exports[{}]", path, i)));
    if (e.name.empty()) e.name = fmt::format("export{}", i);
    cfg.exports.push_back(std::move(e));
    ++i;
  }
  return cfg;
}

Result<ExportConfig> parse_export_json(std::string_view json_text, const std::string& where) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return fail(Errc::kInvalidArgument, "{}: not valid JSON", where);
  return parse_export(j, where);
}

Status validate(DaemonConfig& cfg) {
  if (cfg.num_slots == 0 || cfg.num_slots > 256) {
    return fail(Errc::kInvalidArgument, "engine: num_slots must be 1..256, not {}", cfg.num_slots);
  }
  if (cfg.exports.empty() && cfg.control_socket.empty()) {
    return fail(Errc::kInvalidArgument, "no exports configured");
  }
  if (cfg.crypt_threads > ice::kMaxCryptThreads) {
    return fail(Errc::kInvalidArgument,
                "engine: crypt_threads (--crypto-threads) must be 0..{}, not {}",
                ice::kMaxCryptThreads, cfg.crypt_threads);
  }
  if (cfg.poll_us > kMaxPollUs) {
    return fail(Errc::kInvalidArgument, "poll_us (--poll-us) must be 0..{}, not {}", kMaxPollUs,
                cfg.poll_us);
  }
  std::set<std::string> names, sockets;
  for (size_t i = 0; i < cfg.exports.size(); ++i) {
    ExportConfig& e = cfg.exports[i];
    if (e.name.empty()) e.name = fmt::format("export{}", i);
    const std::string& n = e.name;
    if (!names.insert(n).second) return fail(Errc::kInvalidArgument, "export name '{}' used twice", n);
    if (e.socket.empty()) return fail(Errc::kInvalidArgument, "export '{}': no socket path", n);
    if (e.image.empty()) return fail(Errc::kInvalidArgument, "export '{}': no image", n);
    if (auto spec = backend::parse_image_spec(e.image); !spec) {
      return fail(spec.error().code, "export '{}': {}", n, spec.error().message);
    }
    if (e.io_timeout_s == 0 || e.io_timeout_s > 3600) {
      return fail(Errc::kInvalidArgument,
                  "export '{}': io_timeout (--io-timeout) must be 1..3600 seconds, not {}", n,
                  e.io_timeout_s);
    }
    if (!sockets.insert(e.socket).second) {
      return fail(Errc::kInvalidArgument, "socket path {} used by two exports", e.socket);
    }
    if (e.socket.rfind("fd:", 0) == 0 && e.listen_fd < 0) {  // QEMU's addr.type=fd
      ICEBLK_ASSIGN_OR_RETURN(e.listen_fd, parse_fd_socket(e.socket));
      if (e.keys == blk::KeyMode::kOutOfBand && e.ice && e.secure_world_socket.empty()) {
        return fail(Errc::kInvalidArgument, "export '{}': socket {} needs an explicit secure_world_socket "
                    "(--secure-world-socket)", n, e.socket);
      }
    }
    if (e.num_queues == 0 || e.num_queues > blk::kMaxQueues) {
      return fail(Errc::kInvalidArgument, "export '{}': num_queues (--num-queues) must be 1..{}, not {}", n,
                  blk::kMaxQueues,
                  e.num_queues);
    }
    if (e.queue_size < 4 || e.queue_size > 1024 || !is_power_of_two(e.queue_size)) {
      return fail(Errc::kInvalidArgument,
                  "export '{}': queue_size (--queue-size) must be a power of two in 4..1024, not {}", n, e.queue_size);
    }
    if (e.serial.empty()) e.serial = e.name.substr(0, 20);
    if (e.poll_us && *e.poll_us > kMaxPollUs) {
      return fail(Errc::kInvalidArgument, "export '{}': poll_us must be 0..{}, not {}", n,
                  kMaxPollUs, *e.poll_us);
    }
    if (!e.ice) continue;
    if (e.max_slots == 0 || e.max_slots > 255) {
      return fail(Errc::kInvalidArgument, "export '{}': max_slots (--max-slots) must be 1..255, not {}", n,
                  e.max_slots);
    }
    if (e.slot_offset > 255 || e.slot_offset + e.max_slots > cfg.num_slots) {
      return fail(Errc::kOutOfRange,
                  "export '{}': slot range [{}, {}) (slot_offset, max_slots) exceeds the engine's {} slots "
                  "(num_slots, --num-slots)",
                  n, e.slot_offset, uint64_t{e.slot_offset} + e.max_slots, cfg.num_slots);
    }
    for (const auto& [alg, ks] : e.algorithms) {
      if (alg == ice::Algorithm::kAesEcb && !cfg.allow_ecb) {
        return fail(Errc::kInvalidArgument, "export '{}': AES-ECB requires engine allow_ecb (--allow-ecb)", n);
      }
    }
    if (e.keys == blk::KeyMode::kOutOfBand && e.secure_world_socket.empty()) {
      e.secure_world_socket = e.socket + ".sw";
    }
    // Overlap with an earlier export: refuse, naming both (spec §2: the host
    // configures ranges so that no two VMs overlap).
    const ice::SlotRange r{e.slot_offset, e.max_slots};
    for (size_t k = 0; k < i; ++k) {
      const ExportConfig& o = cfg.exports[k];
      if (o.ice && r.overlaps(ice::SlotRange{o.slot_offset, o.max_slots})) {
        return fail(Errc::kInvalidArgument,
                    "slot ranges overlap: export '{}' [{}, {}) and export '{}' [{}, {})", o.name, o.slot_offset,
                    o.slot_offset + o.max_slots, n, e.slot_offset, e.slot_offset + e.max_slots);
      }
    }
  }
  // Bounded memory (blk/buffer_pool.h): every queue of an ICE export needs at least
  // one chunk of bounce buffers, from its export's cap and from the engine's.
  if (cfg.engine_buffer_memory < blk::kMinQueueBufferMemory) {
    return fail(Errc::kInvalidArgument, "engine: buffer_memory (--engine-buffer-memory) {} is below one chunk ({})",
                cfg.engine_buffer_memory, blk::kMinQueueBufferMemory);
  }
  for (const ExportConfig& e : cfg.exports) {
    if (e.ice && e.max_buffer_memory / e.num_queues < blk::kMinQueueBufferMemory) {
      return fail(Errc::kInvalidArgument,
                  "export '{}': max_buffer_memory (--max-buffer-memory) {} gives each of its {} queues less than "
                  "one chunk ({})",
                  e.name, e.max_buffer_memory, e.num_queues, blk::kMinQueueBufferMemory);
    }
  }
  return {};
}

}  // namespace iceblk::daemon
