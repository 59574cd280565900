// Conformance suite for a virtio-blk (+ ICE) device behind a vhost-user socket:
// the checks of the spec (docs/protocol.md, /spec virtio-blk-ice.md) and of base
// virtio-blk, including malformed requests a driver can send. Used by
// `iceblk conformance --socket PATH` and by the integration tests.
//
// Each check gives PASS, FAIL (with what was expected and seen) or SKIP (the device
// does not offer the feature the check needs). The suite connects several times:
// with every feature it can get, with ICE but without in-band keys (bit 23), and
// without ICE (plain 16-byte headers). It writes to the device: run it on a scratch
// image. Ciphertext on the medium is compared with AES computed independently
// through OpenSSL EVP (not through iceblk's engine).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "iceblk/result.h"

namespace iceblk::driver {

struct ConformanceOptions {
  std::string socket_path;
  // Out-of-band key channel; without it the out-of-band key checks are skipped.
  std::string secure_world_socket;
  bool verbose = false;  // details for passing checks too
};

enum class Verdict { kPass, kFail, kSkip };

struct CheckResult {
  std::string name;     // "ice.dun_overflow"
  Verdict verdict = Verdict::kFail;
  std::string detail;   // why it failed / was skipped
};

struct ConformanceReport {
  std::vector<CheckResult> checks;
  size_t passed = 0, failed = 0, skipped = 0;
};

// "PASS  base.get_id", "FAIL  ice.bad_slot: expected IOERR, got OK", "SKIP  ...: reason".
std::string format_check(const CheckResult& r);

// Runs every check, calling `on_result` after each. An error only when the suite
// cannot start (no device at the socket); device misbehaviour is a FAIL.
Result<ConformanceReport> run_conformance(const ConformanceOptions& opts,
                                          const std::function<void(const CheckResult&)>& on_result = {});

}  // namespace iceblk::driver
