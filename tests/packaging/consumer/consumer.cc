// A tiny user of the installed iceblk driver library: connects to an iceblkd,
// writes a data unit encrypted with a named key, reads it back decrypted, and reads
// it with encryption off to check that the medium holds ciphertext.
//   consumer SOCKET
#include <cstdio>
#include <cstring>
#include <vector>

#include "iceblk/device.h"

using namespace iceblk;
using namespace iceblk::driver;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer SOCKET\n");
    return 2;
  }
  ConnectOptions o;
  o.socket_path = argv[1];
  o.memory_size = 8 << 20;
  auto dev = Device::connect(o);
  if (!dev) {
    std::fprintf(stderr, "connect: %s\n", dev.error().to_string().c_str());
    return 1;
  }
  std::vector<uint8_t> key(64);
  for (size_t i = 0; i < key.size(); ++i)
    key[i] = static_cast<uint8_t>(i * 3 + 1);  // XTS: halves differ
  if (auto st = (*dev)->add_key("k", {ice::Algorithm::kAesXts, ice::KeySize::k256, 4096}, key);
      !st) {
    std::fprintf(stderr, "add_key: %s\n", st.error().to_string().c_str());
    return 1;
  }
  std::vector<uint8_t> data(4096), back(4096), raw(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 1);
  if (auto st = (*dev)->write(0, data, KeyRef{"k", 0}); !st) {
    std::fprintf(stderr, "write: %s\n", st.error().to_string().c_str());
    return 1;
  }
  if (auto st = (*dev)->read(0, back, KeyRef{"k", 0}); !st) {
    std::fprintf(stderr, "read: %s\n", st.error().to_string().c_str());
    return 1;
  }
  if (auto st = (*dev)->read(0, raw); !st) {
    std::fprintf(stderr, "raw read: %s\n", st.error().to_string().c_str());
    return 1;
  }
  if (back != data) {
    std::fprintf(stderr, "decrypted data differs from what was written\n");
    return 1;
  }
  if (raw == data) {
    std::fprintf(stderr, "the medium holds plaintext\n");
    return 1;
  }
  std::printf("consumer: encrypted write/read through %s OK (%s keys)\n", argv[1],
              key_mode_name((*dev)->key_mode()));
  return 0;
}
