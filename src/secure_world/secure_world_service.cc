// Serving the secure world's messages (spec §7): one request -> one response, each
// with its audit record; the caller is identified by its channel, never by the message.
#include "secure_world/secure_world_impl.h"

namespace iceblk::secure_world {

// Called only on the loop thread (vm.suppressed is not shared).
void SecureWorld::Impl::audit_record(VmState& vm, uint16_t op, std::optional<uint32_t> slot,
                                     WireStatus status, std::string detail) {
  AuditRecord r{std::chrono::system_clock::now(), vm.channel.name, op, slot, status,
                std::move(detail)};
  if (vm.log_limiter->allow()) {
    if (vm.suppressed != 0) {
      logger->warn("vm={} {} audit records not logged (rate limit)", vm.channel.name,
                   std::exchange(vm.suppressed, 0));
    }
    logger->log(status == WireStatus::kOk ? spdlog::level::info : spdlog::level::warn, "{}",
                format_audit_record(r));
  } else {
    ++vm.suppressed;
  }
  std::lock_guard lk(audit_mu);
  audit.push_back(std::move(r));
  while (audit.size() > opts.audit_capacity) audit.pop_front();
}

void SecureWorld::Impl::queue_response(Connection& c, uint16_t op, WireStatus st,
                                       std::span<const uint8_t> payload) {
  ResponseHeader h;
  h.magic = kMagic;
  h.op = op;
  h.status = static_cast<uint16_t>(st);
  h.payload_len = static_cast<uint32_t>(payload.size());
  const auto* hp = reinterpret_cast<const uint8_t*>(&h);
  c.out.insert(c.out.end(), hp, hp + sizeof h);
  c.out.insert(c.out.end(), payload.begin(), payload.end());
}

void SecureWorld::Impl::bad_message(Connection& c, uint16_t op, std::string why) {
  audit_record(vms[c.vm_index], op, std::nullopt, WireStatus::kBadMessage, std::move(why));
  queue_response(c, op, WireStatus::kBadMessage, {});
}

void SecureWorld::Impl::serve(Connection& c, const RequestHeader& hdr,
                              std::span<const uint8_t> payload) {
  VmState& vm = vms[c.vm_index];
  const uint16_t op = hdr.op;
  auto reply = [&](std::optional<uint32_t> slot, WireStatus st, std::string detail,
                   std::span<const uint8_t> out_payload = {}) {
    // The audit record is written before the reply leaves, so a client that got its
    // reply always finds its record.
    audit_record(vm, op, slot, st, std::move(detail));
    queue_response(c, op, st, out_payload);
  };

  // The caller's range, as the engine knows it now (the VM may have been removed).
  auto range = engine.vm_range(vm.channel.vm);
  std::optional<uint32_t> slot;
  if (payload.size() >= sizeof(SlotPayload)) slot = load_obj<le32>(payload.data()).get();

  if (!range) {
    reply(slot, WireStatus::kDenied, "VM is no longer registered with the engine");
    return;
  }
  if (static_cast<Op>(op) == Op::kQueryRange) {
    RangePayload rp;
    rp.slot_offset = range->offset;
    rp.max_slots = range->count;
    reply(std::nullopt, WireStatus::kOk, {},
          std::span(reinterpret_cast<const uint8_t*>(&rp), sizeof rp));
    return;
  }

  // Spec §7: a slot outside the caller's range is refused before the engine (or the
  // key blob) is looked at.
  if (!range->contains(PhysSlot(*slot))) {
    reply(slot, WireStatus::kDenied,
          fmt::format("slot outside the VM's range [{}, {})", range->offset,
                      uint64_t{range->offset} + range->count));
    return;
  }

  if (static_cast<Op>(op) == Op::kInvalidateKey) {
    auto st = engine.evict(PhysSlot(*slot));
    if (!st) {
      reply(slot, WireStatus::kInternal, st.error().to_string());
    } else {
      reply(slot, WireStatus::kOk, {});
    }
    return;
  }

  // SET_KEY: the blob is parsed in place in the connection's input buffer, which
  // process_input zeroises as soon as this returns.
  const auto blob = payload.subspan<offsetof(SetKeyPayload, blob), ice::kKeyBlobSize>();
  auto key = ice::parse_key_blob(blob, opts.capabilities);
  if (!key) {
    reply(slot, key_blob_status(key.error()), key.error().message);
    return;
  }
  auto st = engine.program(PhysSlot(*slot), std::move(*key));
  if (!st) {
    reply(slot, WireStatus::kInternal, st.error().to_string());
    return;
  }
  reply(slot, WireStatus::kOk, {});
}

bool SecureWorld::Impl::process_input(Connection& c) {
  while (c.in_len >= kHeaderSize) {
    // TRUST: the header is copied out of the peer's bytes once and checked before use.
    const auto hdr = load_obj<RequestHeader>(c.in.data());
    const uint16_t op = hdr.op;
    const auto want = check_request_header(hdr);
    if (!want) {
      bad_message(c, op, want.error().message);
      return false;
    }
    const size_t total = kHeaderSize + *want;  // <= kInBufSize, checked above
    if (c.in_len < total) return true;          // wait for the rest
    serve(c, hdr, std::span<const uint8_t>(c.in.data() + kHeaderSize, *want));
    // Zeroise the consumed message (it may hold a key), keep what follows it.
    secure_zero(c.in.data(), total);
    std::memmove(c.in.data(), c.in.data() + total, c.in_len - total);
    c.in_len -= total;
    secure_zero(c.in.data() + c.in_len, kInBufSize - c.in_len);
  }
  return true;
}

}  // namespace iceblk::secure_world
