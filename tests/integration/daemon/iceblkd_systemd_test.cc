// iceblkd as a host daemon, the real binary as a subprocess: --version, a listening
// socket inherited the QEMU qtest way (--socket fd:N, "socket": "fd:N"), systemd
// socket activation through systemd-socket-activate (the conformance suite and
// verify run through the activated socket; exports matched by FileDescriptorName=
// and by path), and the sd_notify protocol (READY=1, STOPPING=1).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "base/sanitizers.h"
#include "iceblk/device.h"
#include "integration/daemon/subprocess.h"

#ifndef ICEBLKD_PATH
#error "ICEBLKD_PATH must name the iceblkd binary"
#endif
#ifndef ICEBLK_CLI_PATH
#error "ICEBLK_CLI_PATH must name the iceblk binary"
#endif
#ifndef ICEBLK_PROJECT_VERSION
#error "ICEBLK_PROJECT_VERSION must be the project version"
#endif

namespace iceblk {
namespace {

using testing::Subprocess;
namespace drv = iceblk::driver;

const char* kSocketActivate = "/usr/bin/systemd-socket-activate";

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// A listening unix stream socket bound to `path`, without FD_CLOEXEC (inherited).
int listen_on(const std::string& path, int type = SOCK_STREAM, bool do_listen = true) {
  const int fd = ::socket(AF_UNIX, type, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), path.size());
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      (do_listen && ::listen(fd, 8) != 0)) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  return fd;
}

// Sets an environment variable for the children spawned while it lives.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

class IceblkdSystemd : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("iceblkd-sd");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string log(const std::string& name) const { return dir_ + "/" + name + ".log"; }

  static std::unique_ptr<drv::Device> connect(const std::string& socket) {
    drv::ConnectOptions o;
    o.socket_path = socket;
    o.memory_size = 16 << 20;
    o.reply_timeout_ms = 10000;
    auto d = drv::Device::connect(o);
    EXPECT_TRUE(d) << socket << ": " << d.error().to_string();
    return d ? std::move(*d) : nullptr;
  }
  // Encrypted write + read back + raw read (ciphertext on the medium).
  static void check_io(const std::string& socket) {
    auto dev = connect(socket);
    ASSERT_TRUE(dev);
    std::vector<uint8_t> key(64);
    for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(i + 1);
    ASSERT_TRUE(dev->add_key("k", {ice::Algorithm::kAesXts, ice::KeySize::k256, 4096}, key));
    const auto data = pattern(8192, 3);
    std::vector<uint8_t> back(data.size()), raw(data.size());
    ASSERT_TRUE(dev->write(4096, data, drv::KeyRef{"k", 1}));
    ASSERT_TRUE(dev->read(4096, back, drv::KeyRef{"k", 1}));
    EXPECT_EQ(back, data);
    ASSERT_TRUE(dev->read(4096, raw));
    EXPECT_NE(raw, data);
  }
  static void stop_cleanly(Subprocess& p) {
    p.signal(SIGTERM);
    ASSERT_TRUE(p.wait(20000)) << "no exit after SIGTERM:\n" << p.output();
    EXPECT_EQ(p.term_signal(), 0) << p.output();
    EXPECT_EQ(p.exit_code(), 0) << p.output();
  }

  std::string dir_;
};

TEST_F(IceblkdSystemd, Version) {
  for (const char* bin : {ICEBLKD_PATH, ICEBLK_CLI_PATH}) {
    SCOPED_TRACE(bin);
    auto r = testing::run_to_exit({bin, "--version"}, log("version"));
    EXPECT_EQ(r.code, 0) << r.output;
    const auto lines = testing::lines_of(r.output);
    ASSERT_GE(lines.size(), 3u) << r.output;
    const std::string name = std::filesystem::path(bin).filename();
    EXPECT_EQ(lines[0].rfind(name + " " + ICEBLK_PROJECT_VERSION, 0), 0u) << lines[0];
    // Built from this git checkout: the revision is named.
    if (std::filesystem::exists(std::string(ICEBLK_SOURCE_DIR) + "/.git")) {
      EXPECT_NE(lines[0].find("(git "), std::string::npos) << lines[0];
    }
    EXPECT_EQ(lines[1].rfind("OpenSSL 3.", 0), 0u) << lines[1];
    if (name == "iceblkd") {
      EXPECT_EQ(lines[2].rfind("liburing 2.", 0), 0u) << lines[2];
    } else {
#if ICEBLK_TSAN || ICEBLK_ASAN
      // A sanitizer link keeps liburing in the CLI too (scripts/test.sh --sanitize
      // thread|address); the line then names the loaded library, truthfully.
      EXPECT_TRUE(lines[2] == "liburing: not used" || lines[2].rfind("liburing 2.", 0) == 0)
          << lines[2];
#else
      EXPECT_EQ(lines[2], "liburing: not used");
#endif
    }
  }
}

// The QEMU qtest way: bind and listen, then exec the daemon with the fd.
TEST_F(IceblkdSystemd, InheritedListeningFd) {
  const std::string sock = dir_ + "/vm0.sock";
  const int fd = listen_on(sock);
  ASSERT_GE(fd, 0);
  {
    Subprocess p({ICEBLKD_PATH, "--socket", "fd:" + std::to_string(fd), "--image", dir_ + "/d.img",
                  "--size", "16M"},
                 log("fd"));
    ASSERT_GT(p.pid(), 0);
    check_io(sock);
    check_io(sock);  // reconnect through the same inherited socket
    stop_cleanly(p);
    EXPECT_NE(p.output().find("fd:" + std::to_string(fd)), std::string::npos) << p.output();
  }
  // The socket belongs to whoever handed it in: still there, still listening.
  EXPECT_TRUE(std::filesystem::exists(sock));
  int accepting = 0;
  socklen_t len = sizeof accepting;
  ASSERT_EQ(::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len), 0);
  EXPECT_EQ(accepting, 1);

  // The same through the config file.
  const std::string cfg = dir_ + "/c.json";
  testing::write_file(cfg, "{\"exports\": [{\"name\": \"vm1\", \"socket\": \"fd:" +
                               std::to_string(fd) + "\", \"image\": \"" + dir_ + "/d.img\"}]}");
  {
    Subprocess p({ICEBLKD_PATH, "--config", cfg}, log("fdcfg"));
    ASSERT_GT(p.pid(), 0);
    check_io(sock);
    stop_cleanly(p);
  }
  ::close(fd);
}

TEST_F(IceblkdSystemd, InheritedFdErrors) {
  auto expect_error = [&](const std::vector<std::string>& args, const std::string& needle) {
    auto r = testing::run_to_exit(args, log("err"));
    EXPECT_EQ(r.code, 1) << r.output;
    const auto lines = testing::lines_of(r.output);
    ASSERT_EQ(lines.size(), 1u) << r.output;
    EXPECT_EQ(lines[0].rfind("iceblkd: ", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find(needle), std::string::npos) << lines[0];
  };
  const std::string img = dir_ + "/d.img";
  expect_error({ICEBLKD_PATH, "--socket", "fd:99", "--image", img, "--size", "1M"}, "fd:99");
  expect_error({ICEBLKD_PATH, "--socket", "fd:x", "--image", img, "--size", "1M"}, "fd:N");
  const int not_listening = listen_on(dir_ + "/n.sock", SOCK_STREAM, false);
  ASSERT_GE(not_listening, 0);
  expect_error({ICEBLKD_PATH, "--socket", "fd:" + std::to_string(not_listening), "--image", img,
                "--size", "1M"},
               "listening unix stream socket");
  ::close(not_listening);
  EXPECT_FALSE(std::filesystem::exists(img));  // a failed start leaves no image
}

// systemd-socket-activate listens, and execs iceblkd with LISTEN_FDS on the first
// connection; the whole conformance suite then runs through the activated socket.
TEST_F(IceblkdSystemd, SocketActivationConformance) {
  if (!std::filesystem::exists(kSocketActivate))
    GTEST_SKIP() << "systemd-socket-activate not installed";
  const std::string sock = dir_ + "/vm0.sock";
  Subprocess p({kSocketActivate, "-l", sock, "--fdname=vm0", ICEBLKD_PATH, "--image",
                dir_ + "/d.img", "--size", "64M"},
               log("sa"));
  ASSERT_GT(p.pid(), 0);
  ASSERT_TRUE(testing::wait_for_listener(sock)) << p.output();
  auto conf =
      testing::run_to_exit({ICEBLK_CLI_PATH, "conformance", "-s", sock}, log("conformance"));
  EXPECT_EQ(conf.code, 0) << conf.output;
  EXPECT_NE(conf.output.find(" 0 failed"), std::string::npos) << conf.output;
  auto verify = testing::run_to_exit({ICEBLK_CLI_PATH, "verify", "-s", sock, "--length", "1M"},
                                     log("verify"));
  EXPECT_EQ(verify.code, 0) << verify.output;
  check_io(sock);
  stop_cleanly(p);  // the activator exec'd iceblkd: same pid
  const std::string out = p.output();
  EXPECT_NE(out.find("Execing"), std::string::npos) << out;
  EXPECT_NE(out.find("shut down cleanly"), std::string::npos) << out;
  EXPECT_TRUE(std::filesystem::exists(sock)) << "the activated socket is not iceblkd's to remove";
}

// Two sockets for a two-export config: "web" by FileDescriptorName= (no socket path
// in the config), "db" by the path its socket is bound to.
TEST_F(IceblkdSystemd, SocketActivationMatchesNamesAndPaths) {
  if (!std::filesystem::exists(kSocketActivate))
    GTEST_SKIP() << "systemd-socket-activate not installed";
  const std::string a = dir_ + "/a.sock", b = dir_ + "/b.sock", cfg = dir_ + "/c.json";
  testing::write_file(cfg,
                      "{\"exports\": [{\"name\": \"web\", \"image\": \"" + dir_ +
                          "/web.img\", \"size\": \"8M\", \"max_slots\": 8},"
                          "{\"name\": \"db\", \"socket\": \"" +
                          b + "\", \"image\": \"" + dir_ +
                          "/db.img\", \"size\": \"8M\", \"slot_offset\": 8, \"max_slots\": 8}]}");
  Subprocess p(
      {kSocketActivate, "-l", a, "-l", b, "--fdname=web:shared", ICEBLKD_PATH, "--config", cfg},
      log("sa2"));
  ASSERT_GT(p.pid(), 0);
  ASSERT_TRUE(testing::wait_for_listener(a)) << p.output();
  check_io(a);
  check_io(b);
  stop_cleanly(p);
  EXPECT_NE(p.output().find("export 'web'"), std::string::npos) << p.output();

  // A passed socket that no export takes is refused at start-up.
  Subprocess q({kSocketActivate, "-l", dir_ + "/c.sock", "-l", dir_ + "/d.sock",
                "--fdname=vm0:stray", ICEBLKD_PATH, "--image", dir_ + "/x.img", "--size", "1M"},
               log("stray"));
  ASSERT_TRUE(testing::wait_for_listener(dir_ + "/c.sock")) << q.output();
  ASSERT_TRUE(q.wait(20000)) << q.output();
  EXPECT_EQ(q.exit_code(), 1) << q.output();
  EXPECT_NE(q.output().find("no export uses"), std::string::npos) << q.output();
  EXPECT_NE(q.output().find("stray"), std::string::npos) << q.output();
}

// Type=notify: READY=1 once serving, STOPPING=1 when SIGTERM starts the shutdown.
TEST_F(IceblkdSystemd, NotifyReadyAndStopping) {
  const std::string ns = dir_ + "/notify";
  const int fd = listen_on(ns, SOCK_DGRAM, false);
  ASSERT_GE(fd, 0);
  timeval tv{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  auto next = [&] {
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  };
  const std::string sock = dir_ + "/vm0.sock";
  std::unique_ptr<Subprocess> p;
  {
    ScopedEnv env("NOTIFY_SOCKET", ns);
    p = std::make_unique<Subprocess>(
        std::vector<std::string>{ICEBLKD_PATH, "--socket", sock, "--image", dir_ + "/d.img",
                                 "--size", "4M"},
        log("notify"));
  }
  ASSERT_GT(p->pid(), 0);
  const std::string ready = next();
  EXPECT_NE(ready.find("READY=1"), std::string::npos) << ready << "\n" << p->output();
  EXPECT_NE(ready.find("STATUS=serving 1 export(s)"), std::string::npos) << ready;
  // Ready means serving: the socket accepts a front-end at once.
  check_io(sock);
  p->signal(SIGTERM);
  const std::string stopping = next();
  EXPECT_NE(stopping.find("STOPPING=1"), std::string::npos) << stopping;
  ASSERT_TRUE(p->wait(20000)) << p->output();
  EXPECT_EQ(p->exit_code(), 0) << p->output();
  ::close(fd);
}

}  // namespace
}  // namespace iceblk
