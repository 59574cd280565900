// iceblkd confines itself after start-up (src/daemon/sandbox.h): the seccomp filter
// is on every thread, no_new_privs is set, --user drops root after the image and the
// socket are open (the process is then not dumpable unless --allow-core-dumps), and
// a forbidden syscall from a queue worker kills the daemon, only the daemon, with
// nothing on the image torn. Runs the real binary (ICEBLKD_PATH).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "ice/crypto_mode.h"
#include "iceblk/device.h"
#include "integration/daemon/subprocess.h"
#include "support/pattern.h"
#include "support/wait.h"

#ifndef ICEBLKD_PATH
#error "ICEBLKD_PATH must name the iceblkd binary"
#endif

namespace iceblk {
namespace {

namespace drv = iceblk::driver;
namespace fs = std::filesystem;
using test::pattern;
using testing::Subprocess;

// "Name:\tvalue" lines of /proc/<pid>[/task/<tid>]/status.
std::map<std::string, std::string> proc_status(const std::string& path) {
  std::map<std::string, std::string> m;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string v = line.substr(colon + 1);
    v.erase(0, v.find_first_not_of(" \t"));
    v.erase(v.find_last_not_of(" \t") + 1);
    m[line.substr(0, colon)] = v;
  }
  return m;
}

class Sandbox : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("iceblkd-sandbox");
    ASSERT_FALSE(dir_.empty());
    sock_ = dir_ + "/vm.sock";
    img_ = dir_ + "/vm.img";
  }
  void TearDown() override {
    ::unsetenv("ICEBLK_TESTING_SECCOMP_PROBE_FILE");
    fs::remove_all(dir_);
  }
  std::unique_ptr<Subprocess> start(std::initializer_list<std::string> more) {
    std::vector<std::string> v{ICEBLKD_PATH, "--socket",     sock_, "--image",     img_,  "--size",
                               "8M",         "--num-queues", "2",   "--io-engine", "sync"};
    v.insert(v.end(), more);
    auto p = std::make_unique<Subprocess>(v, dir_ + "/iceblkd.log");
    EXPECT_GT(p->pid(), 0);
    EXPECT_TRUE(testing::wait_for_listener(sock_)) << p->output();
    // The filter goes on just after the sockets listen (start-up is done then).
    const bool sandbox = std::find(v.begin(), v.end(), "--no-sandbox") == v.end();
    const std::string status = "/proc/" + std::to_string(p->pid()) + "/status";
    if (sandbox) {
      EXPECT_TRUE(test::eventually([&] { return proc_status(status)["Seccomp"] == "2"; }))
          << p->output();
    }
    return p;
  }
  std::unique_ptr<drv::Device> connect() const {
    drv::ConnectOptions o;
    o.socket_path = sock_;
    o.num_queues = 2;
    o.memory_size = 16 << 20;
    o.reply_timeout_ms = 10000;
    o.request_timeout = std::chrono::milliseconds(10000);
    auto d = drv::Device::connect(o);
    EXPECT_TRUE(d) << d.error().to_string();
    return d ? std::move(*d) : nullptr;
  }
  std::vector<uint8_t> medium(uint64_t off, size_t len) const {
    std::ifstream f(img_, std::ios::binary);
    f.seekg(static_cast<std::streamoff>(off));
    std::vector<uint8_t> v(len);
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(len));
    return v;
  }
  // Every thread's Seccomp/NoNewPrivs lines (the queue workers exist while a driver
  // is connected).
  std::map<std::string, std::string> threads_field(pid_t pid, const std::string& field) const {
    std::map<std::string, std::string> out;
    for (const auto& t : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
      out[t.path().filename().string()] = proc_status(t.path().string() + "/status")[field];
    }
    return out;
  }

  std::string dir_, sock_, img_;
};

TEST_F(Sandbox, FilterAndNoNewPrivsOnEveryThread) {
  auto d = start({});
  auto dev = connect();
  ASSERT_TRUE(dev);
  ASSERT_TRUE(dev->write(0, pattern(65536, 1), 1));  // queue 1's worker runs
  std::vector<uint8_t> back(65536);
  ASSERT_TRUE(dev->read(0, back, 0));
  EXPECT_EQ(back, pattern(65536, 1));
  auto st = proc_status("/proc/" + std::to_string(d->pid()) + "/status");
  EXPECT_EQ(st["Seccomp"], "2") << "filter mode expected";
  EXPECT_EQ(st["NoNewPrivs"], "1");
  // The key arena is locked (4 MiB; RLIMIT_MEMLOCK does not bind root).
  EXPECT_GE(std::stoul(st["VmLck"]), 4096u) << st["VmLck"];
  const auto seccomp = threads_field(d->pid(), "Seccomp");
  EXPECT_GE(seccomp.size(), 4u) << "main, export, two queue workers at least";
  for (const auto& [tid, v] : seccomp) EXPECT_EQ(v, "2") << "thread " << tid;
  for (const auto& [tid, v] : threads_field(d->pid(), "NoNewPrivs"))
    EXPECT_EQ(v, "1") << "thread " << tid;
  dev.reset();
  d->signal(SIGTERM);
  ASSERT_TRUE(d->wait(20000)) << d->output();
  EXPECT_EQ(d->exit_code(), 0) << d->output();
  EXPECT_EQ(d->term_signal(), 0) << d->output();
  EXPECT_FALSE(fs::exists(sock_)) << "socket left behind";
}

// --crypto-threads: the pool's threads exist before the filter goes on, so they are
// filtered too (TSYNC), and what they do afterwards (futex) is allowed: large
// encrypted requests, split across them, complete correctly under the sandbox, and
// the shutdown joins them.
TEST_F(Sandbox, CryptoThreadsRunUnderTheFilter) {
  auto d = start({"--crypto-threads", "2"});
  auto dev = connect();
  ASSERT_TRUE(dev);
  const ice::CryptoMode mode{ice::Algorithm::kAesXts, ice::KeySize::k256, 4096};
  ASSERT_TRUE(dev->add_key("k", mode, pattern(64, 1)));
  for (uint64_t i = 0; i < 8; ++i) {
    const auto data = pattern(256 * 1024, static_cast<uint32_t>(10 + i));
    const uint64_t off = i * 256 * 1024;
    ASSERT_TRUE(dev->write(off, data, drv::KeyRef{"k", off / 4096}, static_cast<uint16_t>(i % 2)));
    std::vector<uint8_t> back(data.size());
    ASSERT_TRUE(dev->read(off, back, drv::KeyRef{"k", off / 4096}, static_cast<uint16_t>(i % 2)));
    EXPECT_EQ(back, data) << "request " << i;
    EXPECT_NE(medium(off, data.size()), data) << "plaintext on the image";
  }
  EXPECT_NE(d->output().find("2 crypto thread(s)"), std::string::npos) << d->output();
  int crypt_threads = 0;
  const std::string task = "/proc/" + std::to_string(d->pid()) + "/task";
  for (const auto& t : fs::directory_iterator(task)) {
    std::ifstream comm(t.path().string() + "/comm");
    std::string name;
    std::getline(comm, name);
    if (name != "iceblk-crypt") continue;
    ++crypt_threads;
    EXPECT_EQ(proc_status(t.path().string() + "/status")["Seccomp"], "2")
        << "crypto thread " << t.path();
  }
  EXPECT_EQ(crypt_threads, 2);
  dev.reset();
  d->signal(SIGTERM);
  ASSERT_TRUE(d->wait(20000)) << d->output();
  EXPECT_EQ(d->exit_code(), 0) << d->output();
  EXPECT_EQ(d->term_signal(), 0) << d->output();
}

TEST_F(Sandbox, NoSandboxLeavesTheFilterOff) {
  auto d = start({"--no-sandbox"});
  auto st = proc_status("/proc/" + std::to_string(d->pid()) + "/status");
  EXPECT_EQ(st["Seccomp"], "0");
  EXPECT_EQ(st["NoNewPrivs"], "0");
  // Logged once start-up is done, which may be just after the socket listens.
  EXPECT_TRUE(test::eventually([&] {
    return d->output().find("sandbox off (--no-sandbox)") != std::string::npos;
  })) << d->output();
}

TEST_F(Sandbox, UserDropsRootAfterTheImageIsOpenAndStaysUndumpable) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to another user";
  // The directory lets the dropped daemon remove its socket; the image stays
  // root's, writable only because it was opened before the drop.
  ::chmod(dir_.c_str(), 0777);
  for (bool allow_dumps : {false, true}) {
    SCOPED_TRACE(allow_dumps ? "--allow-core-dumps" : "default");
    auto d = allow_dumps ? start({"--user", "65534", "--group", "65534", "--allow-core-dumps"})
                         : start({"--user", "65534", "--group", "65534"});
    auto dev = connect();
    ASSERT_TRUE(dev);
    ASSERT_TRUE(dev->write(4096, pattern(8192, 7)));
    ASSERT_TRUE(dev->flush());
    EXPECT_EQ(medium(4096, 8192), pattern(8192, 7));
    const std::string proc = "/proc/" + std::to_string(d->pid());
    auto st = proc_status(proc + "/status");
    EXPECT_EQ(st["Uid"], "65534\t65534\t65534\t65534");
    EXPECT_EQ(st["Gid"], "65534\t65534\t65534\t65534");
    EXPECT_EQ(st["Groups"], "65534");
    EXPECT_EQ(st["Seccomp"], "2");
    // Not dumpable: the kernel makes /proc/PID/* root's; dumpable: the user's.
    struct stat sb {};
    ASSERT_EQ(::stat((proc + "/status").c_str(), &sb), 0);
    EXPECT_EQ(sb.st_uid, allow_dumps ? 65534u : 0u);
    dev.reset();
    d->signal(SIGTERM);
    ASSERT_TRUE(d->wait(20000)) << d->output();
    EXPECT_EQ(d->exit_code(), 0) << d->output();
  }
  auto r = testing::run_to_exit(
      {ICEBLKD_PATH, "--socket", sock_, "--image", img_, "--user", "no-such-user-xyz"},
      dir_ + "/err.log");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("no-such-user-xyz"), std::string::npos) << r.output;
}

TEST_F(Sandbox, KeyArenaThatCannotBeLockedIsOneWarningAndTheDaemonServes) {
  if (::geteuid() != 0)
    GTEST_SKIP() << "needs root to drop CAP_IPC_LOCK from the bounding set (setpriv)";
  // Without CAP_IPC_LOCK (root bypasses the limit) and with a 64 KiB RLIMIT_MEMLOCK
  // the 4 MiB arena cannot be locked: one warning line naming the limit, then the
  // daemon serves keys as usual (they stay out of dumps: the arena is still there).
  Subprocess d({"/usr/bin/setpriv", "--bounding-set", "-ipc_lock", "--inh-caps", "-ipc_lock",
                "/usr/bin/prlimit", "--memlock=65536:65536", ICEBLKD_PATH, "--socket", sock_,
                "--image", img_, "--size", "8M", "--num-queues", "2"},
               dir_ + "/iceblkd.log");
  ASSERT_TRUE(testing::wait_for_listener(sock_)) << d.output();
  auto dev = connect();
  ASSERT_TRUE(dev);
  ASSERT_TRUE(
      dev->add_key("k", {ice::Algorithm::kAesXts, ice::KeySize::k256, 4096}, pattern(64, 3)));
  ASSERT_TRUE(dev->write(0, pattern(8192, 4), drv::KeyRef{"k", 0}));
  std::vector<uint8_t> back(8192);
  ASSERT_TRUE(dev->read(0, back, drv::KeyRef{"k", 0}));
  EXPECT_EQ(back, pattern(8192, 4));
  int warnings = 0;
  for (const auto& l : testing::lines_of(d.output())) {
    if (l.find("key arena") != std::string::npos) {
      ++warnings;
      EXPECT_NE(l.find("RLIMIT_MEMLOCK is 64 KiB"), std::string::npos) << l;
      EXPECT_NE(l.find("[warning]"), std::string::npos) << l;
    }
  }
  EXPECT_EQ(warnings, 1) << d.output();
  const std::string locked = "VmLck";
  EXPECT_EQ(proc_status("/proc/" + std::to_string(d.pid()) + "/status")[locked], "0 kB");
}

TEST_F(Sandbox, ForbiddenSyscallFromAWorkerKillsOnlyTheDaemon) {
  const std::string probe = dir_ + "/probe";
  ::setenv("ICEBLK_TESTING_SECCOMP_PROBE_FILE", probe.c_str(), 1);
  auto d = start({});
  auto dev = connect();
  ASSERT_TRUE(dev);
  // Data that completed before the violation must be on the image afterwards.
  for (uint64_t i = 0; i < 16; ++i)
    ASSERT_TRUE(dev->write(i * 65536, pattern(65536, static_cast<uint32_t>(100 + i))));
  ASSERT_TRUE(dev->flush());
  testing::write_file(probe, "");
  // The next kick makes the worker call execve(2): the filter kills the process.
  std::vector<uint8_t> next = pattern(65536, 200);
  auto st = dev->write(2 << 20, next);
  ASSERT_FALSE(st) << "the daemon served a request after the forbidden syscall";
  EXPECT_EQ(st.error().code, Errc::kClosed) << st.error().to_string();
  ASSERT_TRUE(d->wait(10000)) << d->output();
  EXPECT_EQ(d->term_signal(), SIGSYS) << "exit code " << d->exit_code() << "; output:\n"
                                      << d->output();
  // The front-end lives on and sees a closed device; the image holds exactly what
  // completed, and the killed write was not applied in part.
  auto again = dev->read(0, std::span(next).first(4096));
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, Errc::kClosed);
  for (uint64_t i = 0; i < 16; ++i)
    EXPECT_EQ(medium(i * 65536, 65536), pattern(65536, static_cast<uint32_t>(100 + i)))
        << "block " << i;
  EXPECT_EQ(medium(2 << 20, 65536), std::vector<uint8_t>(65536, 0));
}

}  // namespace
}  // namespace iceblk
