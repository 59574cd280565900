// The `iceblk` command line against real devices in child processes:
// qemu-storage-daemon's vhost-user-blk export (plain virtio-blk, no ICE) and iceblkd
// (ICE, in-band and secure-world keys). Skipped when a binary is missing.
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "support/temp_dir.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;

struct Run {
  int rc = -1;
  std::string out;  // stdout + stderr
};

Run run(const std::string& cmd) {
  Run r;
  FILE* p = ::popen(("timeout 120 " + cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = ::pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// A child process killed (SIGTERM, then waited for) at destruction.
class Child {
 public:
  explicit Child(std::vector<std::string> argv) {
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    if (::posix_spawn(&pid_, a[0], nullptr, nullptr, a.data(), environ) != 0) pid_ = -1;
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int st;
      ::waitpid(pid_, &st, 0);
    }
  }
  [[nodiscard]] bool ok() const { return pid_ > 0; }

 private:
  pid_t pid_ = -1;
};

bool wait_for_socket(const std::string& path) {
  for (int i = 0; i < 100; ++i) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

class IceblkCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = iceblk::test::make_temp_dir("iceblk-cli");
    cli_ = ICEBLK_CLI_PATH;
  }
  void TearDown() override {
    child_.reset();
    fs::remove_all(dir_);
  }
  std::string dir_, cli_;
  std::unique_ptr<Child> child_;
};

TEST_F(IceblkCli, HelpShowsUsage) {
  auto r = run(cli_ + " --help");
  EXPECT_EQ(r.rc, 0);
  for (const char* s : {"info", "read", "write", "verify", "bench", "conformance", "Examples"}) {
    EXPECT_NE(r.out.find(s), std::string::npos) << s;
  }
}

TEST_F(IceblkCli, MissingSocketIsAClearError) {
  auto r = run(cli_ + " info --socket " + dir_ + "/none.sock");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("no device socket at"), std::string::npos) << r.out;
}

TEST_F(IceblkCli, QemuStorageDaemonPlainVirtioBlk) {
  const std::string qsd = "/usr/bin/qemu-storage-daemon";
  if (!fs::exists(qsd)) GTEST_SKIP() << "qemu-storage-daemon not installed";
  const std::string img = dir_ + "/disk.img", sock = dir_ + "/qsd.sock";
  { std::ofstream(img).close(); }
  fs::resize_file(img, 32 << 20);
  child_ = std::make_unique<Child>(std::vector<std::string>{
      qsd, "--blockdev", "driver=file,node-name=f0,filename=" + img, "--blockdev", "driver=raw,node-name=d0,file=f0",
      "--export",
      "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=" + sock + ",writable=on,num-queues=2"});
  ASSERT_TRUE(child_->ok());
  ASSERT_TRUE(wait_for_socket(sock));

  auto info = run(cli_ + " info -s " + sock);
  ASSERT_EQ(info.rc, 0) << info.out;
  EXPECT_NE(info.out.find("inline encryption:   absent"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("header 16 bytes"), std::string::npos) << info.out;

  auto w = run(cli_ + " write -s " + sock + " --offset 64K --length 256K --pattern seed:3");
  ASSERT_EQ(w.rc, 0) << w.out;
  auto rd = run(cli_ + " read -s " + sock + " --offset 64K --length 256K --pattern seed:3");
  ASSERT_EQ(rd.rc, 0) << rd.out;
  EXPECT_NE(rd.out.find("pattern matches"), std::string::npos);
  auto bad = run(cli_ + " read -s " + sock + " --offset 64K --length 256K --pattern seed:4");
  EXPECT_EQ(bad.rc, 1) << bad.out;

  const std::string key = dir_ + "/k.bin";
  { std::ofstream(key, std::ios::binary) << std::string(64, 'k'); }
  auto enc = run(cli_ + " write -s " + sock + " --length 4K --pattern 1 --key-file " + key);
  EXPECT_EQ(enc.rc, 1);
  EXPECT_NE(enc.out.find("does not offer inline encryption"), std::string::npos) << enc.out;

  auto bench = run(cli_ + " bench -s " + sock + " --rw randrw --bs 4K --iodepth 8 --queues 2 --runtime 1 --json --quiet");
  ASSERT_EQ(bench.rc, 0) << bench.out;
  EXPECT_NE(bench.out.find("\"iops\""), std::string::npos);

  auto conf = run(cli_ + " conformance -s " + sock);
  EXPECT_EQ(conf.rc, 0) << conf.out;
  EXPECT_EQ(conf.out.find("FAIL "), std::string::npos) << conf.out;
  EXPECT_NE(conf.out.find("SKIP  ice."), std::string::npos) << conf.out;
  EXPECT_NE(conf.out.find("PASS  bad.unknown_type"), std::string::npos) << conf.out;
}

TEST_F(IceblkCli, IceblkdEveryConformanceCheckPassesAndVerifyWorks) {
  const std::string daemon = ICEBLKD_PATH;
  const std::string img = dir_ + "/disk.img", sock = dir_ + "/ice.sock";
  child_ = std::make_unique<Child>(std::vector<std::string>{daemon, "--socket", sock, "--image", img, "--size", "64M",
                                                            "--num-queues", "2", "--log-level", "warn"});
  ASSERT_TRUE(child_->ok());
  ASSERT_TRUE(wait_for_socket(sock));
  auto info = run(cli_ + " info -s " + sock + " --json");
  ASSERT_EQ(info.rc, 0) << info.out;
  EXPECT_NE(info.out.find("\"key_mode\": \"in-band\""), std::string::npos) << info.out;

  auto conf = run(cli_ + " conformance -s " + sock);
  EXPECT_EQ(conf.rc, 0) << conf.out;
  EXPECT_EQ(conf.out.find("FAIL "), std::string::npos) << conf.out;

  auto verify = run(cli_ + " verify -s " + sock + " --length 1M --algorithm aes-128-xts --data-unit-size 512");
  EXPECT_EQ(verify.rc, 0) << verify.out;
  EXPECT_NE(verify.out.find("verify PASSED"), std::string::npos);

  // Key file: wrong length is refused with both lengths named and no key bytes.
  const std::string key = dir_ + "/k.hex";
  { std::ofstream(key) << std::string(62, 'a') << "\n"; }
  auto bad = run(cli_ + " write -s " + sock + " --length 4K --pattern 1 --key-file " + key);
  EXPECT_EQ(bad.rc, 1);
  EXPECT_NE(bad.out.find("needs a 64-byte key"), std::string::npos) << bad.out;
  EXPECT_EQ(bad.out.find("aaaaaaaa"), std::string::npos) << bad.out;

  // Encrypted write + read with a hex key file and the default DUN.
  { std::ofstream(key) << std::string(64, 'a') << std::string(64, 'b') << "\n"; }
  auto w = run(cli_ + " write -s " + sock + " --offset 1M --length 64K --pattern seed:9 --key-file " + key);
  ASSERT_EQ(w.rc, 0) << w.out;
  auto r = run(cli_ + " read -s " + sock + " --offset 1M --length 64K --pattern seed:9 --key-file " + key);
  EXPECT_EQ(r.rc, 0) << r.out;
  auto raw = run(cli_ + " read -s " + sock + " --offset 1M --length 64K --pattern seed:9");
  EXPECT_EQ(raw.rc, 1) << raw.out;  // the medium holds ciphertext

  auto bench = run(cli_ + " bench -s " + sock + " --rw randwrite --bs 4K --iodepth 16 --size 4M --encrypt on --quiet");
  EXPECT_EQ(bench.rc, 0) << bench.out;
  EXPECT_NE(bench.out.find("IOPS"), std::string::npos);
}

TEST_F(IceblkCli, IceblkdSecureWorldKeys) {
  const std::string daemon = ICEBLKD_PATH;
  const std::string img = dir_ + "/disk.img", sock = dir_ + "/sw.sock";
  child_ = std::make_unique<Child>(std::vector<std::string>{daemon, "--socket", sock, "--image", img, "--size", "64M",
                                                            "--keys", "secure-world", "--slot-offset", "8",
                                                            "--max-slots", "4", "--log-level", "warn"});
  ASSERT_TRUE(child_->ok());
  ASSERT_TRUE(wait_for_socket(sock));
  ASSERT_TRUE(wait_for_socket(sock + ".sw"));
  auto conf = run(cli_ + " conformance -s " + sock);
  EXPECT_EQ(conf.rc, 0) << conf.out;
  EXPECT_EQ(conf.out.find("FAIL "), std::string::npos) << conf.out;
  EXPECT_NE(conf.out.find("PASS  oob.keys_survive_reset"), std::string::npos) << conf.out;
  auto verify = run(cli_ + " verify -s " + sock + " --length 256K");
  EXPECT_EQ(verify.rc, 0) << verify.out;
  EXPECT_NE(verify.out.find("keys out-of-band"), std::string::npos) << verify.out;
}

}  // namespace
