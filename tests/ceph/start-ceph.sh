#!/bin/bash
# Single-node, auth-less, in-memory (memstore) Ceph mon+osd (+mgr if CEPH_MGR=1) + radosgw
# on 127.0.0.1:${RGW_PORT:-9103}. Tests/CI only. Needs: apt-get install radosgw ceph-mon ceph-osd curl
# Stop with stop-ceph.sh (kills only the PIDs recorded under $CEPH_DIR/run).
set -euo pipefail
D=${CEPH_DIR:-/tmp/scaleout/ceph/c}
PORT=${RGW_PORT:-9103}
# berth's copy: the monitor's port is settable too, so that two clusters can run on one machine.
MON_PORT=${MON_PORT:-3300}
rm -rf "$D"; mkdir -p "$D"/{mon,osd0,mgr,run,log}
FSID=$(uuidgen)
cat > "$D/ceph.conf" <<CONF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
mon max pg per osd = 1000
run dir = $D/run
log file = $D/log/\$name.log
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid
keyring = $D/keyring
ms bind ipv6 = false
ms mon client mode = crc secure
ms client mode = crc secure
[mon]
mon data = $D/mon
# The store is in memory: a nearly full disk (a busy CI machine) must not stop the monitor.
mon data avail crit = 0
mon data avail warn = 0
[osd]
osd data = $D/osd0
osd objectstore = memstore
memstore device bytes = 4294967296
[mgr]
mgr data = $D/mgr
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw dns name = localhost
log file = $D/log/rgw.log
CONF
C="-c $D/ceph.conf"
ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
monmaptool --create --addv a "[v2:127.0.0.1:$MON_PORT]" --fsid "$FSID" "$D/monmap" >/dev/null
ceph-mon $C --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring"
ceph-mon $C -i a
OSD_UUID=$(uuidgen)
OSD_ID=$(ceph $C osd new "$OSD_UUID")
ceph-osd $C -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" 2>>"$D/log/osd-mkfs.log"
ceph-osd $C -i "$OSD_ID"
if [ "${CEPH_MGR:-0}" = 1 ]; then ceph-mgr $C -i x; fi
radosgw $C -n client.rgw.a
# Up when it answers at all; never silently on without it: a caller would fail later, and less clearly.
up() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"; }
for _ in $(seq 1 120); do up && break; sleep 0.5; done
if ! up; then
  echo "start-ceph.sh: radosgw did not answer on http://127.0.0.1:$PORT within 60 s; logs in $D/log" >&2
  tail -n 20 "$D/log/rgw.log" >&2 2>/dev/null || true
  exit 1
fi
radosgw-admin $C user create --uid=test --display-name=test --access-key=testkey --secret=testsecret >/dev/null
echo "radosgw up on http://127.0.0.1:$PORT (testkey/testsecret)"
