#include "backend/image_spec.h"

#include <charconv>

namespace iceblk::backend {

namespace {

// rbd:POOL/IMAGE[@SNAP][:key=value]... ; "\:" and "\\" escape as in QEMU.
Result<ImageSpec> parse_rbd(std::string_view text) {
  ImageSpec s;
  s.kind = ImageKind::kRbd;
  s.text = std::string(text);
  std::vector<std::string> parts{std::string()};
  for (size_t i = 4; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\\' && i + 1 < text.size()) {
      parts.back() += text[++i];
    } else if (c == ':') {
      parts.emplace_back();
    } else {
      parts.back() += c;
    }
  }
  const std::string& name = parts[0];
  const size_t slash = name.find('/');
  if (slash == std::string::npos || slash == 0) {
    return fail(Errc::kInvalidArgument, "image '{}': missing pool (use rbd:POOL/IMAGE[@SNAP])",
                text);
  }
  s.rbd.pool = name.substr(0, slash);
  std::string rest = name.substr(slash + 1);
  if (rest.find('/') != std::string::npos) {
    return fail(Errc::kInvalidArgument,
                "image '{}': RBD namespaces are not supported (use rbd:POOL/IMAGE)", text);
  }
  if (const size_t at = rest.find('@'); at != std::string::npos) {
    s.rbd.snap = rest.substr(at + 1);
    rest.resize(at);
    if (s.rbd.snap.empty())
      return fail(Errc::kInvalidArgument, "image '{}': empty snapshot name after '@'", text);
  }
  if (rest.empty())
    return fail(Errc::kInvalidArgument, "image '{}': missing image name after the pool", text);
  s.rbd.image = rest;
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    const size_t eq = p.find('=');
    if (eq == std::string::npos || eq == 0) {
      return fail(Errc::kInvalidArgument, "image '{}': option '{}' is not key=value", text, p);
    }
    const std::string key = p.substr(0, eq);
    std::string value = p.substr(eq + 1);
    if (value.empty())
      return fail(Errc::kInvalidArgument, "image '{}': option '{}' has no value", text, key);
    if (key == "conf") {
      s.rbd.conf = std::move(value);
    } else if (key == "id") {
      s.rbd.id = std::move(value);
    } else if (key == "keyring") {
      s.rbd.keyring = std::move(value);
    } else if (key == "mon_host") {
      s.rbd.mon_host = std::move(value);
    } else {
      return fail(Errc::kInvalidArgument,
                  "image '{}': unknown option '{}' (conf, id, keyring or mon_host)", text, key);
    }
  }
  return s;
}

// The URI forms libnbd's nbd_connect_uri takes; checked here so a typo is refused
// with a clear message at configuration time, then handed to libnbd unchanged.
Result<ImageSpec> parse_nbd(std::string_view text, std::string_view scheme) {
  ImageSpec s;
  s.kind = ImageKind::kNbd;
  s.text = std::string(text);
  s.uri = std::string(text);
  std::string_view rest = text.substr(scheme.size() + 3);  // after "://"
  const size_t q = rest.find('?');
  const std::string_view query =
      q == std::string_view::npos ? std::string_view{} : rest.substr(q + 1);
  const std::string_view before_query = rest.substr(0, q);
  const size_t slash = before_query.find('/');
  const std::string_view authority = before_query.substr(0, slash);
  const bool unix_socket = scheme.ends_with("+unix");
  if (unix_socket) {
    if (!authority.empty()) {
      return fail(Errc::kInvalidArgument,
                  "image '{}': {}:// takes no host (use {}:///EXPORT?socket=PATH)", text, scheme,
                  scheme);
    }
    bool has_socket = false;
    size_t pos = 0;
    while (pos <= query.size()) {
      size_t amp = query.find('&', pos);
      if (amp == std::string_view::npos) amp = query.size();
      const std::string_view kv = query.substr(pos, amp - pos);
      if (kv.starts_with("socket=") && kv.size() > 7) has_socket = true;
      pos = amp + 1;
    }
    if (!has_socket) {
      return fail(Errc::kInvalidArgument,
                  "image '{}': missing ?socket=PATH (use {}:///EXPORT?socket=PATH)", text, scheme);
    }
    return s;
  }
  std::string_view host = authority;
  std::string_view port;
  if (host.starts_with('[')) {  // [IPv6]:port
    const size_t close = host.find(']');
    if (close == std::string_view::npos)
      return fail(Errc::kInvalidArgument, "image '{}': unclosed '[' in host", text);
    port = host.substr(close + 1);
    host = host.substr(1, close - 1);
    if (!port.empty() && !port.starts_with(':')) {
      return fail(Errc::kInvalidArgument, "image '{}': junk after ']' in host", text);
    }
    if (!port.empty()) port.remove_prefix(1);
  } else if (const size_t colon = host.rfind(':'); colon != std::string_view::npos) {
    port = host.substr(colon + 1);
    host = host.substr(0, colon);
  }
  if (host.empty()) {
    return fail(Errc::kInvalidArgument, "image '{}': missing host (use {}://HOST[:PORT]/EXPORT)",
                text, scheme);
  }
  if (authority.find(':') != std::string_view::npos || !port.empty()) {
    unsigned value = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || ec != std::errc() || ptr != port.data() + port.size() || value == 0 ||
        value > 65535) {
      return fail(Errc::kInvalidArgument, "image '{}': bad port '{}' (1..65535)", text, port);
    }
  }
  return s;
}

}  // namespace

Result<ImageSpec> parse_image_spec(std::string_view text) {
  if (text.empty()) return fail(Errc::kInvalidArgument, "image: empty");
  if (text.starts_with("rbd:")) return parse_rbd(text);
  const size_t sep = text.find("://");
  if (sep != std::string_view::npos) {
    const std::string_view scheme = text.substr(0, sep);
    // Only a URI-like prefix counts as a scheme; "/a/b://c" stays a path.
    const bool looks_like_scheme =
        !scheme.empty() &&
        scheme.find_first_not_of(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-") ==
            std::string_view::npos;
    if (looks_like_scheme) {
      for (std::string_view known : {"nbd", "nbds", "nbd+unix", "nbds+unix"}) {
        if (scheme == known) return parse_nbd(text, scheme);
      }
      return fail(Errc::kInvalidArgument,
                  "image '{}': unknown scheme '{}' (nbd://, nbds://, nbd+unix://, nbds+unix://, "
                  "rbd:, or a path)",
                  text, scheme);
    }
  }
  ImageSpec s;
  s.text = std::string(text);
  s.path = std::string(text);
  return s;
}

Result<std::unique_ptr<BlockBackend>> open_remote_backend(const ImageSpec& spec,
                                                          const RemoteOptions& opts) {
  switch (spec.kind) {
    case ImageKind::kNbd:
      return open_nbd_backend(spec, opts);
    case ImageKind::kRbd:
      return open_rbd_backend(spec, opts);
    case ImageKind::kFile:
      break;
  }
  return fail(Errc::kInvalidArgument, "image '{}': not a remote image", spec.text);
}

// Built without a client library: the image kind parses, opening says why not.
#ifndef ICEBLK_HAVE_NBD
Result<std::unique_ptr<BlockBackend>> open_nbd_backend(const ImageSpec& spec,
                                                       const RemoteOptions&) {
  return fail(Errc::kUnsupported, "image {}: iceblkd was built without NBD support (libnbd-dev)",
              spec.text);
}
#endif
#ifndef ICEBLK_HAVE_RBD
Result<std::unique_ptr<BlockBackend>> open_rbd_backend(const ImageSpec& spec,
                                                       const RemoteOptions&) {
  return fail(Errc::kUnsupported, "image {}: iceblkd was built without RBD support (librbd-dev)",
              spec.text);
}
#endif

}  // namespace iceblk::backend
