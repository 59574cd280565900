// A walk through the Inline Crypto Engine: register a VM's slot range, program a
// random AES-256-XTS key into one of its slots, encrypt four 512-byte data units of
// text, show each unit's ciphertext (same text, different DUN -> different bytes),
// decrypt, evict. The key is never printed.
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "ice/engine.h"

using namespace iceblk;

namespace {

int die(const Error& e) {
  fmt::print(stderr, "error: {}\n", e.to_string());
  return 1;
}

std::string hex(std::span<const uint8_t> b) {
  std::string s;
  for (uint8_t v : b) s += fmt::format("{:02x}", v);
  return s;
}

std::string printable(std::span<const uint8_t> b) {
  std::string s;
  for (uint8_t v : b) s.push_back(v >= 0x20 && v < 0x7f ? static_cast<char>(v) : '.');
  return s;
}

}  // namespace

int main() {
  constexpr uint32_t kUnit = 512;
  constexpr size_t kUnits = 4;
  constexpr uint64_t kFirstDun = 1000;

  auto engine_r = ice::Engine::create({.num_slots = 64, .allow_ecb = false});
  if (!engine_r) return die(engine_r.error());
  ice::Engine& engine = **engine_r;

  const ice::SlotRange range{16, 8};
  auto vm = engine.add_vm("demo-vm", range);
  if (!vm) return die(vm.error());
  fmt::print("engine: {} physical slots; VM 'demo-vm' (id {}) owns slots [{}, {})\n",
             engine.num_slots(), vm->value, range.offset, range.offset + range.count);

  // A VM whose range overlaps is refused.
  if (auto clash = engine.add_vm("intruder", {20, 4}); !clash) {
    fmt::print("add_vm('intruder', [20, 24)) refused: {}\n", clash.error().message);
  }

  std::array<uint8_t, 64> key_bytes{};
  if (RAND_bytes(key_bytes.data(), key_bytes.size()) != 1) {
    fmt::print(stderr, "error: no randomness\n");
    return 1;
  }
  const ice::CryptoMode mode{ice::Algorithm::kAesXts, ice::KeySize::k256, kUnit};
  auto key = ice::Key::create(mode, key_bytes);
  OPENSSL_cleanse(key_bytes.data(), key_bytes.size());  // the Key holds the only copy now
  if (!key) return die(key.error());
  const PhysSlot slot(range.offset + 2);
  if (auto st = engine.program(slot, std::move(*key)); !st) return die(st.error());
  fmt::print("programmed {} key ({} key bytes, not shown) into physical slot {}\n",
             ice::algorithm_name(mode.alg, mode.key_size), 64, slot.value);

  // Four data units holding the same readable text.
  const std::string_view text =
      "The quick brown fox jumps over the lazy dog. Inline encryption turns each "
      "data unit into ciphertext with its own tweak, the data unit number. ";
  std::vector<uint8_t> data(kUnits * kUnit);
  for (size_t i = 0; i < data.size(); ++i) {
    data[i] = static_cast<uint8_t>(text[(i % kUnit) % text.size()]);
  }
  const std::vector<uint8_t> original = data;

  ice::CryptContext ctx;
  if (auto st = engine.crypt(ctx, slot, ice::Direction::kEncrypt, Dun(kFirstDun), data); !st) {
    return die(st.error());
  }
  fmt::print("\nencrypted {} data units of {} bytes, DUNs {}..{}:\n", kUnits, kUnit, kFirstDun,
             kFirstDun + kUnits - 1);
  for (size_t u = 0; u < kUnits; ++u) {
    const auto unit = std::span<const uint8_t>(data).subspan(u * kUnit, kUnit);
    fmt::print("  unit {} (DUN {}): plain \"{}\"\n", u, kFirstDun + u,
               printable(std::span(original).subspan(u * kUnit, 24)));
    fmt::print("               cipher {}...\n", hex(unit.first(24)));
  }

  if (auto st = engine.crypt(ctx, slot, ice::Direction::kDecrypt, Dun(kFirstDun), data); !st) {
    return die(st.error());
  }
  fmt::print("\ndecrypted: \"{}...\"\nround trip {}\n", printable(std::span(data).first(60)),
             data == original ? "OK: plaintext restored" : "FAILED");

  // A misaligned request and an overflowing DUN are refused before any byte changes.
  std::vector<uint8_t> odd(kUnit + 16);
  if (auto st = engine.crypt(ctx, slot, ice::Direction::kEncrypt, Dun(0), odd); !st) {
    fmt::print("\n{}-byte request refused: {}\n", odd.size(), st.error().to_string());
  }
  std::vector<uint8_t> two(2 * kUnit);
  if (auto st = engine.crypt(ctx, slot, ice::Direction::kEncrypt, Dun(~uint64_t{0}), two); !st) {
    fmt::print("DUN 2^64-1 with 2 units refused: {}\n", st.error().to_string());
  }

  if (auto st = engine.evict(slot); !st) return die(st.error());
  auto after = engine.crypt(ctx, slot, ice::Direction::kDecrypt, Dun(kFirstDun), data);
  fmt::print("evicted slot {} (key zeroised); I/O on it now: {}\n", slot.value,
             after ? "unexpectedly OK" : after.error().to_string());
  return data == original && !after ? 0 : 1;
}
