// The driver library's public API compiles on its own: this file includes only
// include/iceblk/ headers and is built with iceblk_driver's public include path,
// which must not contain src/ (checked below). It links the library and runs.
#include "iceblk/conformance.h"
#include "iceblk/crypto_mode.h"
#include "iceblk/device.h"
#include "iceblk/error.h"
#include "iceblk/key.h"
#include "iceblk/key_mode.h"
#include "iceblk/keyslot_manager.h"
#include "iceblk/result.h"
#include "iceblk/secret_bytes.h"

#if __has_include("base/unique_fd.h") || __has_include("blk/wire.h") || __has_include("driver/device_impl.h")
#error "src/ is on the public API's include path"
#endif

#include <cstdio>
#include <cstring>

int main() {
  using namespace iceblk;
  // Something from each header, so that the library links and answers.
  const std::string names = driver::feature_names(uint64_t{1} << 32);
  const bool ok = names == "VERSION_1" && std::strcmp(key_mode_name(KeyMode::kInBand), "in-band") == 0 &&
                  driver::status_to_error(0, "x").has_value() && !driver::status_to_error(1, "x").has_value();
  driver::ConnectOptions opts;
  opts.socket_path = "/nonexistent/iceblk.sock";
  auto missing = driver::Device::connect(opts);
  if (!ok || missing) {
    std::fprintf(stderr, "public API self-test failed (%s)\n", names.c_str());
    return 1;
  }
  return 0;
}
