// Where an export's image lives: a local file or block device, an NBD export
// (libnbd) or a Ceph RBD image (librbd). One parser for the command line, the JSON
// config and add-export, so every front door accepts and refuses the same text.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "backend/block_backend.h"
#include "base/result.h"

namespace iceblk::backend {

enum class ImageKind { kFile, kNbd, kRbd };

struct RbdSpec {
  std::string pool;
  std::string image;
  std::string snap;      // non-empty: a read-only snapshot
  std::string conf;      // ceph.conf path (empty: librados' default search)
  std::string id;        // client id without "client." (empty: librados' default, "admin")
  std::string keyring;   // keyring path (empty: from the conf file)
  std::string mon_host;  // monitor address(es) (empty: from the conf file)
};

struct ImageSpec {
  ImageKind kind = ImageKind::kFile;
  std::string text;  // as given: names the image in logs and errors
  std::string path;  // kFile
  std::string uri;   // kNbd: the URI handed to libnbd unchanged
  RbdSpec rbd;       // kRbd
};

// Parses an --image / "image" value:
//   rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER][:keyring=PATH][:mon_host=ADDR]
//     (QEMU's spelling; "\\:" is a literal colon)
//   nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH (libnbd's URIs; also
//   nbds:// and nbds+unix://)
//   anything else without "scheme://": a file or block device path.
// Errors name the value and what is wrong (unknown scheme, missing pool, bad port...).
Result<ImageSpec> parse_image_spec(std::string_view text);

// What a remote image does when its storage stops answering during I/O.
enum class StorageErrorPolicy {
  kRetry,  // block and retry until the storage is back (QEMU's default)
  kFail,   // fail requests older than io_timeout with IOERR
};

struct RemoteOptions {
  bool read_only = false;
  uint64_t size = 0;  // RBD: create the image with this size when missing; 0: use as is
  StorageErrorPolicy on_error = StorageErrorPolicy::kRetry;
  // kFail: a request's deadline. kRetry: how long stopping a queue waits for a dead
  // server before failing what is still in flight (so a front-end can disconnect).
  std::chrono::milliseconds io_timeout{std::chrono::seconds(30)};
  // Start-up: how long connecting may take before the image counts as unreachable.
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
};

// Opens an NBD or RBD image (kind != kFile). Errors are one line naming the image.
// Unsupported kinds (built without libnbd/librbd) say so.
Result<std::unique_ptr<BlockBackend>> open_remote_backend(const ImageSpec& spec,
                                                          const RemoteOptions& opts);

Result<std::unique_ptr<BlockBackend>> open_nbd_backend(const ImageSpec& spec,
                                                       const RemoteOptions& opts);
Result<std::unique_ptr<BlockBackend>> open_rbd_backend(const ImageSpec& spec,
                                                       const RemoteOptions& opts);

}  // namespace iceblk::backend
