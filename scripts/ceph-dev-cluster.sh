#!/usr/bin/env bash
# A one-node Ceph cluster for tests and benchmarks, from Debian's packages
# (ceph-mon, ceph-osd, ceph-common; scripts/install-deps.sh --remote):
# one monitor and one memstore OSD (data in RAM, CEPH_DEV_OSD_BYTES, default 1 GiB),
# pool "rbd" with size 1, no cephx, everything bound to 127.0.0.1 only.
#   scripts/ceph-dev-cluster.sh start [DIR]    state (conf, mon store, logs) in DIR
#   scripts/ceph-dev-cluster.sh stop [DIR]     stop the daemons, remove DIR
#   scripts/ceph-dev-cluster.sh status [DIR]   what runs, and the cluster's health
#   scripts/ceph-dev-cluster.sh stop-osd|start-osd [DIR]  (outage tests)
# DIR defaults to $CEPH_DEV_DIR, else /tmp/iceblk-ceph. CEPH_DEV_PORT picks the
# monitor's port (default 13300 + a hash of DIR, so several clusters can coexist;
# outside the OSDs' 6800-7300).
# CEPH_DEV_KEEP=1: stop leaves DIR (logs) in place.
# Memory: the OSD keeps the data in RAM. Measured (ps -o rss, mon + osd, 2026-12-02):
# 61 MiB idle; 1.53 GiB with 900 MiB written into the default 1 GiB device (rbd
# bench: 4 MiB sequential writes, then 200 MiB of 4 KiB random writes), where the
# 4 MiB writes alone had taken it to 1.83 GiB without the malloc settings below;
# 1.34 GiB at the peak of bench/run_e2e_bench.sh --backend rbd (4 x 128 MiB).
# Clients: ceph -c DIR/ceph.conf ..., rbd -c DIR/ceph.conf ..., or the image
# rbd:rbd/NAME:conf=DIR/ceph.conf
set -euo pipefail

cmd=${1:-}
dir=${2:-${CEPH_DEV_DIR:-/tmp/iceblk-ceph}}
conf=$dir/ceph.conf
osd_bytes=${CEPH_DEV_OSD_BYTES:-$((1 << 30))}
if [[ -z ${CEPH_DEV_PORT:-} ]]; then
  port=$((13300 + $(printf '%s' "$dir" | cksum | cut -d' ' -f1) % 1000))
else
  port=$CEPH_DEV_PORT
fi

# Memory (the target is <= 2 GiB for the whole cluster): glibc's arenas and its
# dynamic mmap threshold keep freed message buffers resident; a fixed threshold
# hands large buffers back to the kernel when they are freed.
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2} MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-131072}

die() { echo "ceph-dev-cluster: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 not found (scripts/install-deps.sh --remote)"; }
pid_of() { [[ -f $dir/run/$1.pid ]] && cat "$dir/run/$1.pid" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }
ceph_() { timeout 30 ceph -c "$conf" --connect-timeout 10 "$@"; }

write_conf() {
  mkdir -p "$dir"/{run,log,mon.a}
  cat >"$conf" <<EOF
[global]
fsid = $1
mon_host = v1:127.0.0.1:$port
public_addr = 127.0.0.1
public_network = 127.0.0.1/32
cluster_network = 127.0.0.1/32
ms_bind_msgr2 = false
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
run_dir = $dir/run
pid_file = $dir/run/\$name.pid
log_file = $dir/log/\$name.log
mon_cluster_log_file = $dir/log/cluster.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
[mon]
admin_socket = $dir/run/\$name.asok
mon_data = $dir/mon.\$id
mon_data_avail_crit = 1
mon_data_avail_warn = 1
[client]
admin_socket =
# Writes reach the OSD before they complete, so tests can read the raw objects
# (rados get) while the image is open.
rbd_cache = false
[osd]
admin_socket = $dir/run/\$name.asok
osd_data = $dir/osd.\$id
osd_objectstore = memstore
# memstore writes its data to osd_data only on a full shutdown: keep it across
# stop-osd / start-osd.
osd_fast_shutdown = false
memstore_device_bytes = $osd_bytes
# Pages of the memstore device, not the received message buffers, hold the data
# (without it a 4 MiB write pins its whole message, twice the data's size).
memstore_page_set = true
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64
osd_memory_target = 536870912
osd_class_update_on_start = false
osd_crush_update_on_start = false
EOF
}

start_osd() {
  running osd.0 && return 0
  ceph-osd -c "$conf" -i 0 2>>"$dir/log/osd-start.log" || die "ceph-osd failed to start (see $dir/log/osd.0.log)"
}

wait_pool() {
  # Ready when an object can be written and read back.
  for _ in $(seq 120); do
    if timeout 5 rados -c "$conf" -p rbd put iceblk-ready "$conf" 2>/dev/null &&
       timeout 5 rados -c "$conf" -p rbd stat iceblk-ready >/dev/null 2>&1; then
      timeout 5 rados -c "$conf" -p rbd rm iceblk-ready 2>/dev/null || true
      return 0
    fi
    sleep 0.5
  done
  return 1
}

case $cmd in
  start)
    for b in ceph-mon ceph-osd ceph monmaptool rados rbd uuidgen; do need "$b"; done
    if running mon.a; then echo "ceph-dev-cluster: already running in $dir"; exit 0; fi
    t0=$(date +%s)
    rm -rf "$dir"
    fsid=$(uuidgen)
    write_conf "$fsid"
    monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$port]" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" >"$dir/log/mkfs.log" 2>&1 ||
      die "ceph-mon --mkfs failed: $(tail -3 "$dir/log/mkfs.log")"
    ceph-mon -c "$conf" -i a 2>>"$dir/log/mon-start.log" || die "ceph-mon failed to start (see $dir/log/mon.a.log)"
    mkdir -p "$dir/osd.0"
    uuid=$(uuidgen)
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" >"$dir/log/osd-mkfs.log" 2>&1 ||
      die "ceph-osd --mkfs failed: $(tail -3 "$dir/log/osd-mkfs.log")"
    # Registered and placed in CRUSH from here, not by the OSD at boot: its own
    # mon commands at init race its first monmap and fail now and then ("wrong
    # fsid").
    id=$(ceph_ osd new "$uuid" 0) || die "ceph osd new failed (monitor not answering on 127.0.0.1:$port?)"
    [[ $id == 0 ]] || die "unexpected OSD id $id"
    ceph_ osd crush add osd.0 1.0 root=default >/dev/null 2>&1 || die "ceph osd crush add failed"
    start_osd
    ceph_ osd pool create rbd 8 8 >/dev/null 2>&1
    ceph_ osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1 || true
    ceph_ osd pool application enable rbd rbd >/dev/null 2>&1
    wait_pool || die "pool rbd not usable after 60 s (see $dir/log)"
    echo "ceph-dev-cluster: running in $dir (mon 127.0.0.1:$port, memstore OSD, pool rbd) after $(($(date +%s) - t0)) s"
    echo "ceph-dev-cluster: image syntax rbd:rbd/NAME:conf=$conf"
    ;;
  stop)
    for d in osd.0 mon.a; do
      p=$(pid_of "$d")
      if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then
        kill "$p"
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true
      fi
    done
    [[ -n ${CEPH_DEV_KEEP:-} ]] || { [[ -f $conf ]] && rm -rf "$dir"; }
    echo "ceph-dev-cluster: stopped"
    ;;
  stop-osd)
    # Waits for the process itself (its pid file goes before it has exited).
    p=$(pid_of osd.0)
    if [[ -n $p ]]; then
      kill "$p" 2>/dev/null || true
      for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$p" 2>/dev/null; then die "osd.0 (pid $p) did not stop within 30 s"; fi
    fi
    ;;
  start-osd)
    start_osd
    ;;
  status)
    [[ -f $conf ]] || { echo "ceph-dev-cluster: no cluster in $dir"; exit 3; }
    for d in mon.a osd.0; do
      if running "$d"; then echo "$d: running (pid $(pid_of "$d"))"; else echo "$d: not running"; fi
    done
    running mon.a && ceph_ -s 2>/dev/null || true
    running mon.a && running osd.0
    ;;
  *)
    echo "usage: $0 start|stop|status|stop-osd|start-osd [DIR]" >&2
    exit 2
    ;;
esac
