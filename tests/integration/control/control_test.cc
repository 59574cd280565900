// iceblkd's QMP control socket in-process (Daemon + control::QmpServer), driven by
// a raw QMP client over the real socket and by the driver library on the exports:
// negotiation and protocol errors, add-export/remove-export while other exports
// run verified encrypted I/O, every refused add leaving nothing behind, queries,
// statistics, events, and abusive clients (1 MiB line, 100 connections).
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "base/unique_fd.h"
#include "control/qmp_server.h"
#include "daemon/daemon.h"
#include "ice/key.h"
#include "iceblk/device.h"
#include "integration/control/qmp_client.h"

namespace iceblk {
namespace {

using daemon::Daemon;
using daemon::DaemonConfig;
using daemon::ExportConfig;
using nlohmann::json;
using testing::QmpClient;
namespace drv = iceblk::driver;
namespace fs = std::filesystem;

const ice::CryptoMode kXts256{ice::Algorithm::kAesXts, ice::KeySize::k256, 4096};

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

ice::Key make_key(uint32_t seed) {
  auto k = ice::Key::create(kXts256, pattern(64, seed));
  EXPECT_TRUE(k) << k.error().to_string();
  return std::move(*k);
}

std::unique_ptr<drv::Device> connect_export(const std::string& socket) {
  drv::ConnectOptions o;
  o.socket_path = socket;
  o.num_queues = 0;
  o.memory_size = 8 << 20;
  o.reply_timeout_ms = 10000;
  auto d = drv::Device::connect(o);
  EXPECT_TRUE(d) << socket << ": " << d.error().to_string();
  return d ? std::move(*d) : nullptr;
}

bool slot_empty(Daemon& d, uint32_t phys) {
  auto k = d.engine().lookup(PhysSlot{phys});
  return !k && k.error().code == Errc::kNotFound;
}

// Verified encrypted I/O on one export until stopped: write a pattern with the
// key in virtual slot 0, read it back decrypted, compare.
class IoLoop {
 public:
  IoLoop(std::unique_ptr<drv::Device> dev, uint32_t seed) : dev_(std::move(dev)), seed_(seed) {
    ok_ = dev_ && dev_->program_key(0, make_key(seed_)).has_value();
    thread_ = std::thread([this] { run(); });
  }
  ~IoLoop() { stop(); }
  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  [[nodiscard]] bool programmed() const { return ok_; }
  [[nodiscard]] uint64_t rounds() const { return rounds_.load(); }
  [[nodiscard]] uint64_t errors() const { return errors_.load(); }
  [[nodiscard]] const std::string& first_error() const { return first_error_; }

 private:
  void run() {
    if (!ok_) {
      errors_.fetch_add(1);
      first_error_ = "program_key failed";
      return;
    }
    uint64_t i = 0;
    while (!stop_.load()) {
      const auto data = pattern(16384, seed_ * 1000 + static_cast<uint32_t>(i));
      const uint64_t off = (i % 64) * 16384;
      std::vector<uint8_t> back(data.size());
      Status st = dev_->write(off, data, drv::Encryption{0, off / 4096});
      if (st) st = dev_->read(off, back, drv::Encryption{0, off / 4096});
      if (st && back != data) st = fail(Errc::kIo, "data mismatch at {}", off);
      if (!st) {
        first_error_ = st.error().to_string();
        errors_.fetch_add(1);  // after first_error_: readers check errors() first
        break;
      } else {
        rounds_.fetch_add(1);
      }
      ++i;
    }
  }

  std::unique_ptr<drv::Device> dev_;
  uint32_t seed_;
  bool ok_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> rounds_{0}, errors_{0};
  std::string first_error_;
  std::thread thread_;
};

class Control : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/iceblk-ctl-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (qmp_) qmp_->stop();
    if (daemon_) daemon_->shutdown();
    qmp_.reset();
    daemon_.reset();
    fs::remove_all(dir_);
  }

  ExportConfig make_export(const std::string& name, uint32_t slot_offset, uint32_t max_slots) {
    ExportConfig e;
    e.name = name;
    e.socket = dir_ + "/" + name + ".sock";
    e.image = dir_ + "/" + name + ".img";
    e.size = 4 << 20;
    e.slot_offset = slot_offset;
    e.max_slots = max_slots;
    return e;
  }
  json export_args(const std::string& name, uint32_t slot_offset, uint32_t max_slots) {
    return json{{"name", name},
                {"socket", dir_ + "/" + name + ".sock"},
                {"image", dir_ + "/" + name + ".img"},
                {"size", "4M"},
                {"slot_offset", slot_offset},
                {"max_slots", max_slots}};
  }

  void start(std::vector<ExportConfig> exports, control::QmpOptions opts = {}) {
    DaemonConfig cfg;
    cfg.exports = std::move(exports);
    cfg.control_socket = ctl();
    auto d = Daemon::create(std::move(cfg));
    ASSERT_TRUE(d) << d.error().to_string();
    daemon_ = std::move(*d);
    auto q = control::QmpServer::create(ctl(), *daemon_, opts, [this] { quit_.store(true); });
    ASSERT_TRUE(q) << q.error().to_string();
    qmp_ = std::move(*q);
    ASSERT_TRUE(daemon_->start());
    ASSERT_TRUE(qmp_->start());
  }
  [[nodiscard]] std::string ctl() const { return dir_ + "/ctl.sock"; }
  json exports_now(QmpClient& c) { return c.execute("query-exports")["return"]; }

  std::string dir_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<control::QmpServer> qmp_;
  std::atomic<bool> quit_{false};
};

// --- configuration ---------------------------------------------------------------------

TEST_F(Control, ConfigFileControlSocketAllowsNoExports) {
  const std::string path = dir_ + "/cfg.json";
  auto write = [&](const std::string& text) {
    FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(text.c_str(), f);
    std::fclose(f);
  };
  write("{\"control\": \"" + ctl() + "\"}");
  auto c = daemon::load_config_file(path);
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->control_socket, ctl());
  EXPECT_TRUE(c->exports.empty());
  EXPECT_TRUE(daemon::validate(*c));
  write("{\"control\": \"" + ctl() + "\", \"exports\": []}");
  EXPECT_TRUE(daemon::load_config_file(path));
  write("{\"exports\": []}");
  EXPECT_FALSE(daemon::load_config_file(path));  // no control socket: exports are required
  write("{\"control\": 5, \"exports\": []}");
  auto bad = daemon::load_config_file(path);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("'control' must be a string"), std::string::npos) << bad.error().message;
}

// --- protocol ------------------------------------------------------------------------

TEST_F(Control, GreetingNegotiationAndModeOwnerOnly) {
  start({});
  struct stat st {};
  ASSERT_EQ(::stat(ctl().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  QmpClient c;
  ASSERT_TRUE(c.connect(ctl()));
  const json& g = c.greeting();
  ASSERT_TRUE(g.contains("QMP")) << g;
  EXPECT_TRUE(g["QMP"]["version"]["qemu"].contains("major"));
  EXPECT_TRUE(g["QMP"]["capabilities"].is_array());

  // Before qmp_capabilities every command is refused.
  json r = c.execute("query-exports", nullptr, "early");
  EXPECT_EQ(r["error"]["class"], "CommandNotFound") << r;
  EXPECT_NE(r["error"]["desc"].get<std::string>().find("qmp_capabilities"), std::string::npos);
  EXPECT_EQ(r["id"], "early");
  r = c.execute("add-export", export_args("early", 0, 4));
  EXPECT_EQ(r["error"]["class"], "CommandNotFound") << r;
  EXPECT_FALSE(fs::exists(dir_ + "/early.sock"));
  EXPECT_FALSE(fs::exists(dir_ + "/early.img"));

  r = c.execute("qmp_capabilities", json::object(), 7);
  EXPECT_EQ(r, (json{{"return", json::object()}, {"id", 7}}));
  r = c.execute("qmp_capabilities");
  EXPECT_EQ(r["error"]["class"], "CommandNotFound") << r;
  EXPECT_EQ(exports_now(c), json::array());

  r = c.execute("query-commands");
  bool has_add = false;
  for (const auto& cmd : r["return"]) has_add = has_add || cmd["name"] == "add-export";
  EXPECT_TRUE(has_add) << r;
}

TEST_F(Control, BadInputGetsAClearErrorAndChangesNothing) {
  start({make_export("vm0", 0, 8)});
  QmpClient c;
  ASSERT_TRUE(c.open(ctl()));
  const json before = exports_now(c);
  const json engine_before = c.execute("query-engine")["return"];

  auto expect_error = [&](const std::string& raw, const std::string& cls, const std::string& needle) {
    ASSERT_TRUE(c.send_raw(raw));
    json r = c.reply();
    ASSERT_TRUE(r.contains("error")) << raw << " -> " << r;
    EXPECT_EQ(r["error"]["class"], cls) << raw << " -> " << r;
    EXPECT_NE(r["error"]["desc"].get<std::string>().find(needle), std::string::npos) << raw << " -> " << r;
  };
  expect_error("{\"execute\": query-exports}\n", "GenericError", "JSON parse error");
  expect_error("{\"execute\": \"query-exports\",,}\n", "GenericError", "JSON parse error");
  expect_error("garbage\n", "GenericError", "JSON parse error");
  expect_error("[1, 2, 3]\n", "GenericError", "must be a JSON object");
  expect_error("{\"arguments\": {}}\n", "GenericError", "lacks member 'execute'");
  expect_error("{\"execute\": 42}\n", "GenericError", "'execute' must be a string");
  expect_error("{\"execute\": \"query-exports\", \"arguments\": 5}\n", "GenericError", "'arguments' must be an object");
  expect_error("{\"execute\": \"query-exports\", \"bogus\": 1}\n", "GenericError", "'bogus' is unexpected");
  expect_error("{\"execute\": \"no-such-command\"}\n", "CommandNotFound", "no-such-command has not been found");
  expect_error("{\"execute\": \"query-exports\", \"arguments\": {\"verbose\": true}}\n", "GenericError",
               "Parameter 'verbose' is unexpected");
  expect_error("{\"execute\": \"remove-export\", \"arguments\": {}}\n", "GenericError", "Parameter 'name' is missing");
  expect_error("{\"execute\": \"remove-export\", \"arguments\": {\"name\": 3}}\n", "GenericError",
               "Parameter 'name' expects string");
  expect_error("{\"execute\": \"remove-export\", \"arguments\": {\"name\": \"nope\"}}\n", "DeviceNotFound",
               "no export named 'nope'");
  expect_error("{\"execute\": \"set-log-level\", \"arguments\": {\"level\": \"loud\"}}\n", "GenericError",
               "'level' must be");
  expect_error("{\"execute\": \"query-stats\", \"arguments\": {\"format\": \"xml\"}}\n", "GenericError",
               "'format' must be");
  // add-export: unknown fields, wrong types, and every conflict, each naming it.
  auto add_error = [&](json args, const std::string& needle) {
    json r = c.execute("add-export", args);
    ASSERT_TRUE(r.contains("error")) << args << " -> " << r;
    EXPECT_EQ(r["error"]["class"], "GenericError");
    EXPECT_NE(r["error"]["desc"].get<std::string>().find(needle), std::string::npos) << args << " -> " << r;
  };
  json a = export_args("vm1", 8, 8);
  a["colour"] = "blue";
  add_error(a, "unknown field 'colour'");
  a = export_args("vm1", 8, 8);
  a["max_slots"] = "eight";
  add_error(a, "'max_slots' must be an unsigned integer");
  a = export_args("vm1", 8, 8);
  a["readonly"] = 1;
  add_error(a, "'readonly' must be true or false");
  add_error(json{{"socket", dir_ + "/x.sock"}, {"image", dir_ + "/x.img"}}, "'name' is required");
  add_error(export_args("vm1", 4, 8), "slot ranges overlap: export 'vm0' [0, 8) and export 'vm1' [4, 12)");
  add_error(export_args("vm1", 60, 8), "exceeds the engine's 64 slots");
  a = export_args("vm0", 8, 8);
  a["socket"] = dir_ + "/other.sock";
  a["image"] = dir_ + "/other.img";
  add_error(a, "export name 'vm0' used twice");
  a = export_args("vm1", 8, 8);
  a["socket"] = dir_ + "/vm0.sock";
  add_error(a, "socket path " + dir_ + "/vm0.sock used by two exports");
  // A socket path some other server listens on.
  UniqueFd foreign(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string foreign_path = dir_ + "/foreign.sock";
  std::strncpy(addr.sun_path, foreign_path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(foreign.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(foreign.get(), 1), 0);
  a = export_args("vm1", 8, 8);
  a["socket"] = foreign_path;
  add_error(a, "socket path in use");
  EXPECT_FALSE(fs::exists(dir_ + "/vm1.img")) << "a refused add-export left its image behind";
  a = export_args("vm1", 8, 8);
  a["socket"] = "fd:" + std::to_string(foreign.get());
  add_error(a, "descriptor sockets are for start-up only");
  a = export_args("vm1", 8, 8);
  a.erase("size");
  a["image"] = dir_ + "/missing.img";
  add_error(a, "missing.img does not exist");
  a = export_args("vm1", 8, 8);
  a["image"] = dir_ + "/no/such/dir/x.img";
  add_error(a, "does not exist");

  // Nothing changed: same exports, same engine, no stray files, and the range and
  // name are still free for a correct request.
  EXPECT_EQ(exports_now(c), before);
  EXPECT_EQ(c.execute("query-engine")["return"], engine_before);
  EXPECT_FALSE(fs::exists(dir_ + "/vm1.sock"));
  EXPECT_FALSE(fs::exists(dir_ + "/missing.img"));
  EXPECT_TRUE(c.execute("add-export", export_args("vm1", 8, 8)).contains("return"));
  auto dev = connect_export(dir_ + "/vm1.sock");
  ASSERT_TRUE(dev);
  ASSERT_TRUE(dev->write(0, pattern(4096, 3)));
}

TEST_F(Control, OneMiBLineIsRefusedAndClosedOthersUnaffected) {
  start({make_export("vm0", 0, 8)});
  QmpClient good, bad;
  ASSERT_TRUE(good.open(ctl()));
  ASSERT_TRUE(bad.open(ctl()));
  IoLoop io(connect_export(dir_ + "/vm0.sock"), 5);
  // 1 MiB inside one JSON string, no newline.
  std::string line = "{\"execute\": \"query-exports\", \"id\": \"";
  line += std::string(1 << 20, 'x');
  bad.send_raw(line);  // the server may close before all of it is written
  json r = bad.reply();
  ASSERT_TRUE(r.contains("error")) << r.dump().substr(0, 200);
  EXPECT_NE(r["error"]["desc"].get<std::string>().find("longer than 65536 bytes"), std::string::npos) << r;
  EXPECT_TRUE(bad.closed_by_peer());
  EXPECT_TRUE(good.execute("query-exports").contains("return"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  io.stop();
  EXPECT_EQ(io.errors(), 0u) << io.first_error();
  EXPECT_GT(io.rounds(), 0u);
}

TEST_F(Control, RandomBytesFromManyClientsChangeNothing) {
  start({make_export("vm0", 0, 8)});
  QmpClient good;
  ASSERT_TRUE(good.open(ctl()));
  IoLoop io(connect_export(dir_ + "/vm0.sock"), 8);
  const json before = exports_now(good);
  std::mt19937 rng(42);
  const std::string alphabet = "{}[]\":,\\ \n\t0123456789abcdefnulltrue-execute arguments id qmp_capabilities";
  for (int client = 0; client < 12; ++client) {
    QmpClient c;
    ASSERT_TRUE(c.connect(ctl()));
    if (client % 2 == 0) c.execute("qmp_capabilities");
    for (int chunk = 0; chunk < 20; ++chunk) {
      std::string bytes(static_cast<size_t>(rng() % 512), '\0');
      for (auto& b : bytes) b = client % 3 == 0 ? static_cast<char>(rng()) : alphabet[rng() % alphabet.size()];
      if (!c.send_raw(bytes)) break;  // the server may have closed it (e.g. too deep)
    }
  }
  EXPECT_EQ(exports_now(good), before);
  json r = good.execute("query-engine");
  EXPECT_TRUE(r.contains("return")) << r;
  io.stop();
  EXPECT_EQ(io.errors(), 0u) << io.first_error();
}

TEST_F(Control, DeepNestingIsRefusedAndClosed) {
  start({});
  QmpClient c;
  ASSERT_TRUE(c.open(ctl()));
  c.send_raw(std::string(10000, '['));
  json r = c.reply();
  ASSERT_TRUE(r.contains("error")) << r;
  EXPECT_NE(r["error"]["desc"].get<std::string>().find("nested deeper than 64"), std::string::npos) << r;
  EXPECT_TRUE(c.closed_by_peer());
}

TEST_F(Control, FrontEndBreakingTheProtocolIsReportedAsRefused) {
  start({make_export("vm0", 0, 8)});
  QmpClient c;
  ASSERT_TRUE(c.open(ctl()));
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string path = dir_ + "/vm0.sock";
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::vector<uint8_t> garbage(64, 0xff);
  ASSERT_EQ(::send(s.get(), garbage.data(), garbage.size(), MSG_NOSIGNAL), 64);
  auto ev = c.wait_event("PEER_REFUSED", "channel", "vhost-user");
  ASSERT_TRUE(ev);
  EXPECT_EQ((*ev)["data"]["export"], "vm0");
  EXPECT_FALSE((*ev)["data"]["reason"].get<std::string>().empty());
  EXPECT_TRUE(c.wait_event("EXPORT_DISCONNECTED", "export", "vm0"));
  // The export still serves the next front-end.
  auto dev = connect_export(path);
  ASSERT_TRUE(dev);
  ASSERT_TRUE(dev->write(0, pattern(4096, 1)));
}

TEST_F(Control, HundredConnectionsBeyondTheLimitAreRefused) {
  start({make_export("vm0", 0, 8)});
  QmpClient watcher;
  ASSERT_TRUE(watcher.open(ctl()));
  IoLoop io(connect_export(dir_ + "/vm0.sock"), 6);
  std::vector<std::unique_ptr<QmpClient>> conns;
  size_t greeted = 0, refused = 0;
  for (int i = 0; i < 100; ++i) {
    auto c = std::make_unique<QmpClient>();
    ASSERT_TRUE(c->connect(ctl())) << i;
    if (c->greeting().contains("QMP")) {
      ++greeted;
    } else {
      ASSERT_TRUE(c->greeting().contains("error")) << c->greeting();
      EXPECT_NE(c->greeting()["error"]["desc"].get<std::string>().find("too many control clients"),
                std::string::npos);
      EXPECT_TRUE(c->closed_by_peer());
      ++refused;
    }
    conns.push_back(std::move(c));
  }
  EXPECT_EQ(greeted, 15u);  // 16 minus the watcher
  EXPECT_EQ(refused, 85u);
  auto ev = watcher.wait_event("PEER_REFUSED");
  ASSERT_TRUE(ev);
  EXPECT_EQ((*ev)["data"]["channel"], "control");
  EXPECT_TRUE((*ev)["timestamp"].contains("seconds"));
  EXPECT_TRUE((*ev)["timestamp"].contains("microseconds"));
  EXPECT_TRUE(watcher.execute("query-exports").contains("return"));
  conns.clear();  // slots free again
  QmpClient later;
  EXPECT_TRUE(later.open(ctl()));
  io.stop();
  EXPECT_EQ(io.errors(), 0u) << io.first_error();
}

TEST_F(Control, ClientThatNeverReadsDoesNotBlockOthers) {
  control::QmpOptions o;
  o.max_output = 64 * 1024;
  start({make_export("vm0", 0, 32)}, o);
  QmpClient lazy, good;
  ASSERT_TRUE(lazy.open(ctl()));
  ASSERT_TRUE(good.open(ctl()));
  // The lazy client sends many commands and never reads the replies; events too.
  std::string many;
  for (int i = 0; i < 2000; ++i) many += "{\"execute\": \"query-engine\"}\n";
  std::thread writer([&] { lazy.send_raw(many); });
  auto dev = connect_export(dir_ + "/vm0.sock");
  ASSERT_TRUE(dev);
  for (uint32_t i = 0; i < 200; ++i) ASSERT_TRUE(dev->program_key(static_cast<uint8_t>(i % 32), make_key(i)));
  EXPECT_TRUE(good.execute("query-exports").contains("return"));
  EXPECT_TRUE(good.wait_event("KEYSLOT_PROGRAMMED"));
  lazy.close();  // unblocks the writer
  writer.join();
  EXPECT_TRUE(good.execute("query-engine").contains("return"));
}

// --- add-export / remove-export under load --------------------------------------------

TEST_F(Control, AddEightExportsWhileOthersRunVerifiedEncryptedIo) {
  start({make_export("base0", 0, 4), make_export("base1", 4, 4)});
  QmpClient c;
  ASSERT_TRUE(c.open(ctl()));
  IoLoop io0(connect_export(dir_ + "/base0.sock"), 10);
  IoLoop io1(connect_export(dir_ + "/base1.sock"), 11);
  ASSERT_TRUE(io0.programmed() && io1.programmed());
  for (uint32_t i = 0; i < 8; ++i) {
    const std::string name = "vm" + std::to_string(i);
    json r = c.execute("add-export", export_args(name, 8 + i * 4, 4), i);
    ASSERT_TRUE(r.contains("return")) << r;
    EXPECT_EQ(r["id"], i);
  }
  ASSERT_EQ(exports_now(c).size(), 10u);
  // Use each new one: encrypted write and read back, ciphertext on the image.
  std::vector<std::unique_ptr<drv::Device>> devs;  // connected: the keys stay programmed
  for (uint32_t i = 0; i < 8; ++i) {
    const std::string name = "vm" + std::to_string(i);
    devs.push_back(connect_export(dir_ + "/" + name + ".sock"));
    auto& dev = devs.back();
    ASSERT_TRUE(dev) << name;
    ASSERT_TRUE(c.wait_event("EXPORT_CONNECTED", "export", name)) << name;
    ASSERT_TRUE(dev->program_key(1, make_key(100 + i)));
    auto ev = c.wait_event("KEYSLOT_PROGRAMMED", "vm", name);
    ASSERT_TRUE(ev) << name;
    EXPECT_EQ((*ev)["data"]["slot"], 8 + i * 4 + 1);
    EXPECT_EQ((*ev)["data"].size(), 2u) << *ev;  // slot and VM only
    const auto data = pattern(8192, 200 + i);
    ASSERT_TRUE(dev->write(4096, data, drv::Encryption{1, 1}));
    std::vector<uint8_t> back(data.size());
    ASSERT_TRUE(dev->read(4096, back, drv::Encryption{1, 1}));
    EXPECT_EQ(back, data) << name;
    ASSERT_TRUE(dev->flush());
    std::vector<uint8_t> raw(data.size());
    const int fd = ::open((dir_ + "/" + name + ".img").c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pread(fd, raw.data(), raw.size(), 4096), static_cast<ssize_t>(raw.size()));
    ::close(fd);
    EXPECT_NE(raw, data) << name << ": plaintext on the image";
  }
  // query-engine shows the keys' modes, never key bytes.
  json eng = c.execute("query-engine")["return"];
  ASSERT_EQ(eng["vms"].size(), 10u);
  for (const auto& vm : eng["vms"]) {
    ASSERT_GE(vm["slots"].size(), 1u) << vm;
    for (const auto& s : vm["slots"]) {
      EXPECT_EQ(s["algorithm"], "aes-256-xts");
      EXPECT_EQ(s["data-unit-size"], 4096);
      EXPECT_TRUE(s["generation"].is_number_unsigned());
      EXPECT_EQ(s.size(), 5u) << s;  // slot, index, algorithm, data-unit-size, generation
    }
  }

  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  io0.stop();
  io1.stop();
  EXPECT_EQ(io0.errors(), 0u) << io0.first_error();
  EXPECT_EQ(io1.errors(), 0u) << io1.first_error();
  EXPECT_GT(io0.rounds(), 0u);
  EXPECT_GT(io1.rounds(), 0u);

  // Statistics saw the I/O: requests, bytes, encrypted bytes, keys, latencies.
  json st = c.execute("query-stats", json{{"export", "base0"}})["return"];
  ASSERT_EQ(st["exports"].size(), 1u) << st;
  const json& q0 = st["exports"][0]["queues"][0];
  EXPECT_GE(q0["requests"]["write"].get<uint64_t>(), io0.rounds());
  EXPECT_GE(q0["requests"]["read"].get<uint64_t>(), io0.rounds());
  EXPECT_GE(q0["bytes-encrypted"].get<uint64_t>(), io0.rounds() * 16384);
  EXPECT_GE(q0["bytes-decrypted"].get<uint64_t>(), io0.rounds() * 16384);
  EXPECT_EQ(q0["errors"]["ioerr"], 0);
  EXPECT_GE(q0["latency"]["count"].get<uint64_t>(), 2 * io0.rounds());
  EXPECT_EQ(st["exports"][0]["keys-programmed"], 1);
  json prom = c.execute("query-stats", json{{"format", "prometheus"}})["return"];
  const std::string text = prom["text"];
  EXPECT_NE(text.find("# TYPE iceblk_requests_total counter"), std::string::npos);
  EXPECT_NE(text.find("iceblk_requests_total{export=\"vm7\",queue=\"0\",type=\"write\"} 1"), std::string::npos)
      << text.substr(0, 2000);
  EXPECT_NE(text.find("iceblk_request_duration_seconds_bucket{export=\"base0\",queue=\"0\",le=\"+Inf\"}"),
            std::string::npos);
}

TEST_F(Control, RemoveOneMidIoOthersSeeNothing) {
  start({make_export("keep0", 0, 8), make_export("gone", 8, 8), make_export("keep1", 16, 8)});
  QmpClient c;
  ASSERT_TRUE(c.open(ctl()));
  IoLoop k0(connect_export(dir_ + "/keep0.sock"), 20);
  IoLoop k1(connect_export(dir_ + "/keep1.sock"), 21);
  auto gone_dev = connect_export(dir_ + "/gone.sock");
  ASSERT_TRUE(gone_dev);
  ASSERT_TRUE(gone_dev->program_key(3, make_key(30)));  // a second key in its range
  IoLoop g(std::move(gone_dev), 22);
  ASSERT_TRUE(k0.programmed() && k1.programmed() && g.programmed());
  EXPECT_FALSE(slot_empty(*daemon_, 8));
  EXPECT_FALSE(slot_empty(*daemon_, 11));
  // Let every export get going, then remove one in the middle of its I/O.
  const auto t0 = std::chrono::steady_clock::now();
  while (g.rounds() < 20 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  json r = c.execute("remove-export", json{{"name", "gone"}}, "rm");
  ASSERT_TRUE(r.contains("return")) << r;
  // Its front-end sees the disconnect.
  const auto t1 = std::chrono::steady_clock::now();
  while (g.errors() == 0 && std::chrono::steady_clock::now() - t1 < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GT(g.errors(), 0u) << "the removed export's front-end saw no error";
  EXPECT_TRUE(c.wait_event("EXPORT_DISCONNECTED", "export", "gone"));
  auto ev = c.wait_event("KEYSLOT_EVICTED", "vm", "gone");
  ASSERT_TRUE(ev);
  EXPECT_GE((*ev)["data"]["slot"].get<uint32_t>(), 8u);
  EXPECT_LT((*ev)["data"]["slot"].get<uint32_t>(), 16u);
  // Its slots are empty (the engine drops and zeroises the keys), its socket gone.
  for (uint32_t s = 8; s < 16; ++s) EXPECT_TRUE(slot_empty(*daemon_, s)) << s;
  EXPECT_FALSE(fs::exists(dir_ + "/gone.sock"));
  json eng = c.execute("query-engine")["return"];
  ASSERT_EQ(eng["vms"].size(), 2u);
  for (const auto& vm : eng["vms"]) EXPECT_NE(vm["name"], "gone");
  EXPECT_EQ(eng["unassigned"], json::array());
  json ex = exports_now(c);
  ASSERT_EQ(ex.size(), 2u);

  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  k0.stop();
  k1.stop();
  g.stop();
  EXPECT_EQ(k0.errors(), 0u) << k0.first_error();
  EXPECT_EQ(k1.errors(), 0u) << k1.first_error();
  EXPECT_FALSE(slot_empty(*daemon_, 0));
  EXPECT_FALSE(slot_empty(*daemon_, 16));

  // The range, the name and the socket path can be used again at once.
  r = c.execute("add-export", export_args("gone", 8, 8));
  ASSERT_TRUE(r.contains("return")) << r;
  auto again = connect_export(dir_ + "/gone.sock");
  ASSERT_TRUE(again);
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(again->read(0, back));
}

TEST_F(Control, SecureWorldExportAddedAndRemovedAtRuntime) {
  start({make_export("vm0", 0, 8)});
  QmpClient c;
  ASSERT_TRUE(c.open(ctl()));
  IoLoop io(connect_export(dir_ + "/vm0.sock"), 40);
  json a = export_args("sw1", 8, 8);
  a["keys"] = "secure-world";
  ASSERT_TRUE(c.execute("add-export", a).contains("return"));
  const std::string sw = dir_ + "/sw1.sock.sw";  // the default channel: <socket>.sw
  ASSERT_TRUE(fs::exists(sw));
  json ex = exports_now(c);
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[1]["keys"], "secure-world");
  EXPECT_EQ(ex[1]["secure_world_socket"], sw);
  {
    drv::ConnectOptions o;
    o.socket_path = dir_ + "/sw1.sock";
    o.secure_world_socket = sw;
    o.memory_size = 8 << 20;
    auto dev = drv::Device::connect(o);
    ASSERT_TRUE(dev) << dev.error().to_string();
    EXPECT_EQ((*dev)->key_mode(), drv::KeyMode::kOutOfBand);
    ASSERT_TRUE((*dev)->add_key("k", kXts256, pattern(64, 41)));
    const auto data = pattern(8192, 42);
    ASSERT_TRUE((*dev)->write(0, data, drv::KeyRef{"k", 0}));  // programs the key on first use
    EXPECT_TRUE(c.wait_event("KEYSLOT_PROGRAMMED", "vm", "sw1")) << json(c.events()).dump();
    std::vector<uint8_t> back(data.size());
    ASSERT_TRUE((*dev)->read(0, back, drv::KeyRef{"k", 0}));
    EXPECT_EQ(back, data);
  }
  // Out-of-band keys survive the disconnect; remove-export evicts them.
  json eng = c.execute("query-engine")["return"];
  ASSERT_EQ(eng["vms"][1]["programmed"], 1) << eng;
  ASSERT_TRUE(c.execute("remove-export", json{{"name", "sw1"}}).contains("return"));
  for (uint32_t s = 8; s < 16; ++s) EXPECT_TRUE(slot_empty(*daemon_, s)) << s;
  EXPECT_FALSE(fs::exists(sw));
  EXPECT_FALSE(fs::exists(dir_ + "/sw1.sock"));
  // A channel path in use refuses the export, leaving nothing bound.
  a["secure_world_socket"] = dir_ + "/vm0.sock";
  json r = c.execute("add-export", a);
  ASSERT_TRUE(r.contains("error")) << r;
  EXPECT_NE(r["error"]["desc"].get<std::string>().find("in use"), std::string::npos) << r;
  EXPECT_FALSE(fs::exists(dir_ + "/sw1.sock"));
  EXPECT_EQ(exports_now(c).size(), 1u);
  io.stop();
  EXPECT_EQ(io.errors(), 0u) << io.first_error();
}

TEST_F(Control, QuitAndSetLogLevel) {
  start({});
  QmpClient c;
  ASSERT_TRUE(c.open(ctl()));
  EXPECT_TRUE(c.execute("set-log-level", json{{"level", "debug"}}).contains("return"));
  EXPECT_TRUE(c.execute("set-log-level", json{{"level", "info"}}).contains("return"));
  json r = c.execute("quit", nullptr, 1);
  EXPECT_EQ(r, (json{{"return", json::object()}, {"id", 1}}));
  EXPECT_TRUE(c.closed_by_peer());
  const auto t0 = std::chrono::steady_clock::now();
  while (!quit_.load() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(quit_.load());
}

}  // namespace
}  // namespace iceblk
