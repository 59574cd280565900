// Keys stay out of core dumps (docs/threat-model.md): an iceblkd holding 32 in-band
// keys, each used for I/O in both directions (so OpenSSL holds its key schedules),
// is dumped with gcore; the dump holds none of the key bytes and none of their AES
// round keys. The driver library wipes the key blobs from the shared guest memory
// once PROGRAM_KEY completes, so what is left to find would be the daemon's own.
//
// The control run starts the same daemon with ICEBLK_TESTING_KEYS_IN_DUMPS=1 (key
// memory on the ordinary heap, testing only) and must find every key: that is what
// shows the search would catch a leak.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#define OPENSSL_SUPPRESS_DEPRECATED  // AES_set_encrypt_key: the reference key schedule
#include <openssl/aes.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

#include "base/sanitizers.h"
#include "ice/key.h"
#include "iceblk/device.h"
#include "integration/daemon/subprocess.h"
#include "support/pattern.h"

#ifndef ICEBLKD_PATH
#error "ICEBLKD_PATH must name the iceblkd binary"
#endif

namespace iceblk {
namespace {

namespace drv = iceblk::driver;
namespace fs = std::filesystem;
using testing::Subprocess;

constexpr int kKeys = 32;

using Bytes = std::vector<uint8_t>;

// What a leak of one AES key would look like in memory: the key itself (round key 0)
// and its last encryption round key (also the first of the decryption schedule),
// in byte order and as host-order 32-bit words (OpenSSL's C key schedule).
std::vector<Bytes> aes_needles(const Bytes& key) {
  AES_KEY ks{};
  EXPECT_EQ(AES_set_encrypt_key(key.data(), static_cast<int>(key.size() * 8), &ks), 0);
  const auto* words = ks.rd_key + 4 * ks.rounds;
  Bytes host(16), be(16);
  std::memcpy(host.data(), words, 16);
  for (int w = 0; w < 4; ++w) {
    for (int b = 0; b < 4; ++b) be[w * 4 + b] = static_cast<uint8_t>(words[w] >> (24 - 8 * b));
  }
  return {key, be, host};
}

struct KeyCase {
  ice::CryptoMode mode;
  Bytes material;
  std::vector<Bytes> needles;  // every AES key this key is used as, and its round keys
};

std::vector<KeyCase> make_keys() {
  std::vector<KeyCase> keys;
  for (int i = 0; i < kKeys; ++i) {
    KeyCase k;
    switch (i % 3) {
      case 0:
        k.mode = {ice::Algorithm::kAesXts, ice::KeySize::k128, 4096};
        break;
      case 1:
        k.mode = {ice::Algorithm::kAesXts, ice::KeySize::k256, 4096};
        break;
      default:
        k.mode = {ice::Algorithm::kEssivAesCbc, ice::KeySize::k128, 4096};
        break;
    }
    const size_t len = k.mode.alg == ice::Algorithm::kAesXts
                           ? (k.mode.key_size == ice::KeySize::k128 ? 32 : 64)
                           : 16;
    k.material.resize(len);
    EXPECT_EQ(RAND_bytes(k.material.data(), static_cast<int>(len)), 1);
    std::vector<Bytes> aes_keys;
    if (k.mode.alg == ice::Algorithm::kAesXts) {  // two AES keys: data and tweak
      aes_keys.emplace_back(k.material.begin(), k.material.begin() + len / 2);
      aes_keys.emplace_back(k.material.begin() + len / 2, k.material.end());
    } else {  // ESSIV: the CBC key and the IV key SHA-256(key)
      aes_keys.push_back(k.material);
      Bytes salt(32);
      SHA256(k.material.data(), k.material.size(), salt.data());
      aes_keys.push_back(salt);
    }
    for (const Bytes& a : aes_keys) {
      for (Bytes& n : aes_needles(a)) k.needles.push_back(std::move(n));
    }
    keys.push_back(std::move(k));
  }
  return keys;
}

bool contains(const Bytes& hay, const Bytes& needle) {
  return std::search(hay.begin(), hay.end(),
                     std::boyer_moore_horspool_searcher(needle.begin(), needle.end())) != hay.end();
}

class KeyDump : public ::testing::Test {
 protected:
  void SetUp() override {
#if ICEBLK_ASAN || ICEBLK_TSAN
    // A sanitized iceblkd maps terabytes of shadow memory: gcore wrote 36 GiB per dump
    // and filled the disk (scripts/test.sh --sanitize address, session 11).
    GTEST_SKIP() << "the core of a sanitized daemon is its shadow memory";
#endif
    dir_ = testing::make_temp_dir("iceblkd-dump");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    ::unsetenv("ICEBLK_TESTING_KEYS_IN_DUMPS");
    fs::remove_all(dir_);
  }

  // Starts iceblkd, programs and uses every key, dumps it; returns how many of the
  // needles (per key: found any / total) the dump holds.
  struct Found {
    int keys_with_any = 0;  // keys of which at least one needle is in the dump
    int needles = 0;        // needles found
    int total = 0;
    std::string first;  // which, for the message
  };
  Found run(bool control) {
    Found f;
    const std::string sock = dir_ + (control ? "/c.sock" : "/p.sock");
    if (control) ::setenv("ICEBLK_TESTING_KEYS_IN_DUMPS", "1", 1);
    Subprocess d({ICEBLKD_PATH, "--socket", sock, "--image", dir_ + "/vm.img", "--size", "1M",
                  "--max-slots", "32", "--io-engine", "sync", "--allow-core-dumps"},
                 dir_ + "/iceblkd.log");
    ::unsetenv("ICEBLK_TESTING_KEYS_IN_DUMPS");
    EXPECT_TRUE(testing::wait_for_listener(sock)) << d.output();
    drv::ConnectOptions o;
    o.socket_path = sock;
    o.memory_size = 16 << 20;
    auto dev = drv::Device::connect(o);
    EXPECT_TRUE(dev) << dev.error().to_string();
    if (!dev) return f;
    const auto keys = make_keys();
    for (int i = 0; i < kKeys; ++i) {
      auto key = ice::Key::create(keys[i].mode, keys[i].material);
      EXPECT_TRUE(key) << key.error().to_string();
      EXPECT_TRUE((*dev)->program_key(static_cast<uint8_t>(i), *key));
      // Both directions, so the device keys an encryption and a decryption context.
      const auto data = test::pattern(4096, static_cast<uint64_t>(i));
      EXPECT_TRUE((*dev)->write(uint64_t(i) * 4096, data,
                                drv::Encryption{static_cast<uint8_t>(i), uint64_t(i)}));
      Bytes back(4096);
      EXPECT_TRUE((*dev)->read(uint64_t(i) * 4096, back,
                               drv::Encryption{static_cast<uint8_t>(i), uint64_t(i)}));
      EXPECT_EQ(back, data) << "key " << i;
    }
    // Dump it while it holds all 32 keys (the connection stays up).
    const std::string core = dir_ + (control ? "/core-control" : "/core");
    Subprocess g({"/usr/bin/gcore", "-o", core, std::to_string(d.pid())}, dir_ + "/gcore.log");
    EXPECT_TRUE(g.wait(120000)) << g.output();
    const std::string file = core + "." + std::to_string(d.pid());
    EXPECT_TRUE(fs::exists(file)) << "gcore wrote no dump:\n" << g.output();
    std::ifstream in(file, std::ios::binary);
    const Bytes dump((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_GT(dump.size(), size_t{16} << 20) << "the dump should hold the guest memory at least";
    fs::remove(file);
    for (int i = 0; i < kKeys; ++i) {
      bool any = false;
      for (size_t n = 0; n < keys[i].needles.size(); ++n) {
        ++f.total;
        if (contains(dump, keys[i].needles[n])) {
          ++f.needles;
          any = true;
          if (f.first.empty())
            f.first = "key " + std::to_string(i) + " needle " + std::to_string(n);
        }
      }
      if (any) ++f.keys_with_any;
    }
    dev->reset();
    d.signal(SIGTERM);
    EXPECT_TRUE(d.wait(20000)) << d.output();
    return f;
  }

  std::string dir_;
};

TEST_F(KeyDump, ThirtyTwoProgrammedKeysAreNotInTheCoreDump) {
  const Found prot = run(/*control=*/false);
  std::printf("protected run: %d of %d needles found\n", prot.needles, prot.total);
  EXPECT_EQ(prot.needles, 0) << prot.needles << " of " << prot.total
                             << " key needles are in the dump, first: " << prot.first;
  EXPECT_EQ(prot.keys_with_any, 0);
  EXPECT_GT(prot.total, kKeys * 6 - 1);
}

TEST_F(KeyDump, ControlRunWithoutTheKeyArenaFindsEveryKey) {
  // The same search against a daemon that keeps keys on the ordinary heap: if this
  // found nothing, the test above would prove nothing.
  const Found ctl = run(/*control=*/true);
  std::printf("control run: %d of %d needles found, in %d of %d keys\n", ctl.needles, ctl.total,
              ctl.keys_with_any, kKeys);
  EXPECT_EQ(ctl.keys_with_any, kKeys) << ctl.needles << " of " << ctl.total << " needles found";
  EXPECT_GT(ctl.needles, ctl.total / 2) << "round keys too, not only the raw bytes";
}

}  // namespace
}  // namespace iceblk
