// parse_image_spec: the one parser behind --image, the config's "image" and
// add-export. Accepted forms keep their fields; refused ones say what is wrong.
#include "backend/image_spec.h"

#include <gtest/gtest.h>

#include "daemon/config.h"

namespace iceblk::backend {
namespace {

TEST(ImageSpec, FilePaths) {
  for (const char* p : {"/var/lib/vm/disk.img", "disk.img", "/dev/vdb", "/odd/dir://x"}) {
    auto s = parse_image_spec(p);
    ASSERT_TRUE(s) << p << ": " << s.error().message;
    EXPECT_EQ(s->kind, ImageKind::kFile);
    EXPECT_EQ(s->path, p);
  }
}

TEST(ImageSpec, NbdUris) {
  for (const char* u :
       {"nbd://10.0.0.1/disk", "nbd://storage:10809/disk", "nbd://[::1]:10809/x", "nbd://host",
        "nbd+unix:///disk?socket=/run/nbd.sock", "nbds://h/e", "nbd+unix:///?socket=/s"}) {
    auto s = parse_image_spec(u);
    ASSERT_TRUE(s) << u << ": " << s.error().message;
    EXPECT_EQ(s->kind, ImageKind::kNbd);
    EXPECT_EQ(s->uri, u);  // handed to libnbd unchanged
  }
}

TEST(ImageSpec, NbdRefusals) {
  const std::pair<const char*, const char*> bad[] = {
      {"nbd://h:0/e", "bad port"},
      {"nbd://h:70000/e", "bad port"},
      {"nbd://h:12x/e", "bad port"},
      {"nbd://h:/e", "bad port"},
      {"nbd:///e", "missing host"},
      {"nbd+unix:///disk", "missing ?socket"},
      {"nbd+unix://host/d?socket=/s", "takes no host"},
      {"iscsi://h/1", "unknown scheme 'iscsi'"},
      {"http://h/x", "unknown scheme"},
  };
  for (const auto& [text, why] : bad) {
    auto s = parse_image_spec(text);
    ASSERT_FALSE(s) << text;
    EXPECT_NE(s.error().message.find(why), std::string::npos) << text << ": " << s.error().message;
    EXPECT_NE(s.error().message.find(text), std::string::npos)
        << "names the image: " << s.error().message;
  }
}

TEST(ImageSpec, Rbd) {
  auto s = parse_image_spec("rbd:vms/disk1");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->kind, ImageKind::kRbd);
  EXPECT_EQ(s->rbd.pool, "vms");
  EXPECT_EQ(s->rbd.image, "disk1");
  EXPECT_TRUE(s->rbd.snap.empty());

  s = parse_image_spec(
      "rbd:vms/disk1@snap1:conf=/etc/ceph/c\\:1.conf:id=vm7:keyring=/k:mon_host=127.0.0.1\\:6789");
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->rbd.snap, "snap1");
  EXPECT_EQ(s->rbd.conf, "/etc/ceph/c:1.conf");
  EXPECT_EQ(s->rbd.id, "vm7");
  EXPECT_EQ(s->rbd.keyring, "/k");
  EXPECT_EQ(s->rbd.mon_host, "127.0.0.1:6789");
}

TEST(ImageSpec, RbdRefusals) {
  const std::pair<const char*, const char*> bad[] = {
      {"rbd:disk1", "missing pool"},
      {"rbd:/disk1", "missing pool"},
      {"rbd:vms/", "missing image"},
      {"rbd:vms/d@", "empty snapshot"},
      {"rbd:vms/d:foo=1", "unknown option 'foo'"},
      {"rbd:vms/d:conf", "not key=value"},
      {"rbd:vms/d:id=", "has no value"},
  };
  for (const auto& [text, why] : bad) {
    auto s = parse_image_spec(text);
    ASSERT_FALSE(s) << text;
    EXPECT_NE(s.error().message.find(why), std::string::npos) << text << ": " << s.error().message;
  }
}

TEST(ImageSpec, Empty) {
  EXPECT_FALSE(parse_image_spec(""));
}

// The config file takes the same image syntax and the storage-error options.
TEST(RemoteConfig, JsonFields) {
  auto c = daemon::parse_config_text(R"({"exports": [
      {"socket": "/tmp/a.sock", "image": "rbd:vms/a:conf=/etc/ceph/ceph.conf", "on_storage_error": "fail",
       "io_timeout": 5},
      {"socket": "/tmp/b.sock", "image": "nbd+unix:///b?socket=/run/b.sock", "slot_offset": 32}]})",
                                     "t.json");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->exports[0].on_storage_error, StorageErrorPolicy::kFail);
  EXPECT_EQ(c->exports[0].io_timeout_s, 5u);
  EXPECT_EQ(c->exports[1].on_storage_error, StorageErrorPolicy::kRetry);  // the defaults
  EXPECT_EQ(c->exports[1].io_timeout_s, 30u);
  EXPECT_TRUE(daemon::validate(*c));
}

TEST(RemoteConfig, Refusals) {
  const std::pair<const char*, const char*> bad[] = {
      {R"({"socket": "/s", "image": "iscsi://h/1"})", "unknown scheme 'iscsi'"},
      {R"({"socket": "/s", "image": "rbd:noslash"})", "missing pool"},
      {R"({"socket": "/s", "image": "nbd://h:99999/x"})", "bad port"},
      {R"({"socket": "/s", "image": "/i", "on_storage_error": "ignore"})", "must be retry or fail"},
      {R"({"socket": "/s", "image": "/i", "io_timeout": "5"})",
       "'io_timeout' must be an unsigned integer"},
  };
  for (const auto& [json, why] : bad) {
    auto e = daemon::parse_export_json(json, "add-export");
    ASSERT_FALSE(e) << json;
    EXPECT_NE(e.error().message.find(why), std::string::npos) << e.error().message;
    EXPECT_EQ(e.error().message.rfind("add-export", 0), 0u) << "names where: " << e.error().message;
  }
  daemon::DaemonConfig cfg;
  daemon::ExportConfig ex;
  ex.socket = "/s";
  ex.image = "nbd://h/x";
  ex.io_timeout_s = 0;
  cfg.exports.push_back(ex);
  auto v = daemon::validate(cfg);
  ASSERT_FALSE(v);
  EXPECT_NE(v.error().message.find("io_timeout (--io-timeout) must be 1..3600"), std::string::npos);
}

}  // namespace
}  // namespace iceblk::backend
