#!/usr/bin/env bash
# Whole-server load harness: berth against its peers, all in one run, on loopback.
#
# Design question: does a real berth process meet issue 3's targets (one upstream fetch per blob,
# a cold pull close to direct-from-upstream, a hit path close to nginx sendfile, cheap cached
# manifests, small memory), measured as ratios against peers started in the same run on the same
# machine, so the noise of a shared 2-core box hits every row alike?
#
# Started here, each with its own temp dir and loopback port, all killed on exit:
#   origin    docker-registry (filesystem storage), seeded with a random blob + config + manifest
#   berth     target/release/berth serve, default upstream = origin
#   registry  docker-registry in proxy mode (proxy: remoteurl: origin)
#   nginx     nginx proxy_cache + proxy_cache_lock on, cache key = URI
#   sendfile  nginx serving the seeded files directly with sendfile on (the ceiling)
#
# Usage: benches/load/run.sh [--quick] [--out FILE]
#   --quick   64 MiB blob, one run per figure, 3 s wrk runs: a smoke test of the harness itself.
#   --out     where the markdown table goes (default benches/load/last-run.md).
# Needs root only to apt-get install missing tools (docker-registry nginx-light wrk apache2-utils
# curl jq procps). Every server logs each request to a file in its temp dir (their defaults).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

QUICK=0
OUT=benches/load/last-run.md
while (($#)); do
    case $1 in
    --quick) QUICK=1 ;;
    --out)
        OUT=$2
        shift
        ;;
    -h | --help)
        sed -n '2,21p' "$0"
        exit 0
        ;;
    *)
        echo "unknown argument: $1" >&2
        exit 2
        ;;
    esac
    shift
done

if ((QUICK)); then
    BLOB_MIB=64 RUNS=1 WRK_SECS=3
else
    BLOB_MIB=512 RUNS=3 WRK_SECS=10
fi
CONCURRENT=32
REPO=bench
TAG=v1
ACCEPT='application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

# ---- dependencies ------------------------------------------------------------------------------
packages=(docker-registry nginx-light wrk apache2-utils curl jq procps)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
    ((EUID == 0)) || die "missing ${missing[*]}; run as root to apt-get install them"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# BERTH_BIN=path measures that build (another commit's, for a before/after) instead of building this one.
if [[ -z ${BERTH_BIN:-} ]]; then
    log "building berth (release)"
    cargo build --release --quiet --bin berth
fi
BERTH_BIN=${BERTH_BIN:-$ROOT/target/release/berth}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The code measured: the last commit that touched berth's sources (HEAD may be a bench-only commit).
SRC_COMMIT=$(git log -1 --no-merges --format=%h -- src Cargo.lock 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | grep -q . && echo "+dirty" || true)

# ---- processes and cleanup ---------------------------------------------------------------------
WORK=$(mktemp -d /tmp/berth-load.XXXXXX)
declare -A PID=()
cleanup() {
    local p
    for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PID[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port: nothing answers a connect on it. Ports are handed out upward so two
# servers started back to back never get the same one.
NEXT_PORT=$((20000 + RANDOM % 20000))
free_port() {
    local p=$NEXT_PORT
    while (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    NEXT_PORT=$((p + 1))
    echo "$p"
}

# Bounded readiness poll: any HTTP answer on / (or /v2/) counts; gives up after ~20 s.
wait_http() {
    local name=$1 url=$2 i
    for ((i = 0; i < 200; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) != 000 ]] && return 0
        kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited during startup (see $WORK/$name)"
        sleep 0.1
    done
    die "$name not ready at $url after 20 s"
}

# Stops one server and waits (bounded) for it to be gone.
stop() {
    local name=$1 p=${PID[$1]:-} i
    [[ -n $p ]] || return 0
    kill "$p" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset "PID[$name]"
}

# Every pid of a server: nginx's master and its workers; the others are one process.
pids_of() {
    local p=${PID[$1]}
    echo "$p"
    pgrep -P "$p" 2>/dev/null || true
}
CLK_TCK=$(getconf CLK_TCK)
# utime+stime of a server (all its pids), in clock ticks. comm may hold spaces: cut after ')'.
cpu_ticks() {
    local total=0 p f
    for p in $(pids_of "$1"); do
        f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        # After "pid (comm) ": state=1 ... utime=12 stime=13.
        total=$((total + $(awk '{print $12 + $13}' <<<"$f")))
    done
    echo "$total"
}
# Peak RSS (VmHWM) in MiB: the largest of the server's pids.
peak_rss_mib() {
    local max=0 p v
    for p in $(pids_of "$1"); do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        ((v > max)) && max=$v
    done
    awk -v k="$max" 'BEGIN {printf "%.1f", k / 1024}'
}

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }

# ---- origin ------------------------------------------------------------------------------------
ORIGIN_PORT=$(free_port)
ORIGIN=http://127.0.0.1:$ORIGIN_PORT
declare -A PORT=([origin]=$ORIGIN_PORT)
mkdir -p "$WORK/origin/data"
cat >"$WORK/origin/config.yml" <<EOF
version: 0.1
log: {level: info, formatter: text}
storage:
  filesystem: {rootdirectory: $WORK/origin/data}
  cache: {blobdescriptor: inmemory}
http: {addr: 127.0.0.1:$ORIGIN_PORT}
EOF
docker-registry serve "$WORK/origin/config.yml" >"$WORK/origin/log" 2>&1 &
PID[origin]=$!
wait_http origin "$ORIGIN/v2/"

# Monolithic upload: POST for a location, then PUT the bytes with ?digest=.
push_blob() {
    local file=$1 digest=$2 loc sep
    loc=$(curl -sf -X POST -D - -o /dev/null "$ORIGIN/v2/$REPO/blobs/uploads/" |
        awk 'tolower($1) == "location:" {print $2}' | tr -d '\r')
    [[ -n $loc ]] || die "origin gave no upload location"
    [[ $loc == http* ]] || loc=$ORIGIN$loc
    [[ $loc == *\?* ]] && sep='&' || sep='?'
    curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" \
        -o /dev/null "$loc${sep}digest=$digest" || die "upload of $digest failed"
}

log "seeding origin with a random ${BLOB_MIB} MiB blob"
SEED=$WORK/seed
mkdir -p "$SEED"
head -c $((BLOB_MIB << 20)) /dev/urandom >"$SEED/blob"
BLOB_SIZE=$(stat -c %s "$SEED/blob")
BLOB_DIGEST=sha256:$(sha256sum "$SEED/blob" | cut -d' ' -f1)
push_blob "$SEED/blob" "$BLOB_DIGEST"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$BLOB_DIGEST" >"$SEED/config"
CONFIG_DIGEST=sha256:$(sha256sum "$SEED/config" | cut -d' ' -f1)
push_blob "$SEED/config" "$CONFIG_DIGEST"
jq -cn --arg c "$CONFIG_DIGEST" --argjson cs "$(stat -c %s "$SEED/config")" \
    --arg b "$BLOB_DIGEST" --argjson bs "$BLOB_SIZE" '{
    schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
    layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $b, size: $bs}]}' \
    >"$SEED/manifest"
MANIFEST_DIGEST=sha256:$(sha256sum "$SEED/manifest" | cut -d' ' -f1)
curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$SEED/manifest" -o /dev/null "$ORIGIN/v2/$REPO/manifests/$TAG" ||
    die "manifest push failed"
BLOB_PATH=/v2/$REPO/blobs/$BLOB_DIGEST
[[ $(curl -sf "$ORIGIN$BLOB_PATH" | sha256sum | cut -d' ' -f1) == "${BLOB_DIGEST#sha256:}" ]] ||
    die "origin does not serve the seeded blob back"

# How many times the origin was asked for the blob's bytes (GET, not HEAD), from its access log.
origin_blob_gets() { grep -c "\"GET $BLOB_PATH HTTP" "$WORK/origin/log" || true; }

# ---- peers -------------------------------------------------------------------------------------

PEERS=(berth registry nginx sendfile)

start_berth() {
    local d=$WORK/berth
    mkdir -p "$d/data"
    PORT[berth]=${PORT[berth]:-$(free_port)}
    cat >"$d/config.toml" <<EOF
[server]
listen = "127.0.0.1:${PORT[berth]}"
[metrics]
enabled = false
[storage]
path = "$d/data"
[[upstream]]
name = "127.0.0.1:$ORIGIN_PORT"
url = "$ORIGIN"
default = true
# As long as nginx's proxy_cache_valid: the cached-manifest rows measure hits, not revalidation.
tag_ttl = "5m"
EOF
    "$BERTH_BIN" serve --config "$d/config.toml" >>"$d/log" 2>&1 &
    PID[berth]=$!
}

start_registry() {
    local d=$WORK/registry
    mkdir -p "$d/data"
    PORT[registry]=${PORT[registry]:-$(free_port)}
    cat >"$d/config.yml" <<EOF
version: 0.1
log: {level: info, formatter: text}
storage:
  filesystem: {rootdirectory: $d/data}
  cache: {blobdescriptor: inmemory}
http: {addr: 127.0.0.1:${PORT[registry]}}
proxy: {remoteurl: "$ORIGIN"}
EOF
    docker-registry serve "$d/config.yml" >>"$d/log" 2>&1 &
    PID[registry]=$!
}

nginx_common() {
    local d=$1
    mkdir -p "$d/tmp" "$d/cache" "$d/www"
    cat <<EOF
daemon off;
user root;
worker_processes auto;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log $d/access.log;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
EOF
}

start_nginx() {
    local d=$WORK/nginx
    PORT[nginx]=${PORT[nginx]:-$(free_port)}
    mkdir -p "$d"
    {
        nginx_common "$d"
        cat <<EOF
    proxy_cache_path $d/cache levels=1:2 keys_zone=registry:10m max_size=8g inactive=1h use_temp_path=off;
    upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 16; }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache registry;
            proxy_cache_key \$uri;
            proxy_cache_valid 200 5m;
            # One upstream fetch for concurrent misses; followers wait (up to 10 min) for the
            # whole response to be cached, then read it from the cache.
            proxy_cache_lock on;
            proxy_cache_lock_timeout 600s;
            proxy_cache_lock_age 600s;
        }
    }
}
EOF
    } >"$d/nginx.conf"
    nginx -c "$d/nginx.conf" -e "$d/error.log" &
    PID[nginx]=$!
}

start_sendfile() {
    local d=$WORK/sendfile
    PORT[sendfile]=${PORT[sendfile]:-$(free_port)}
    mkdir -p "$d"
    {
        nginx_common "$d"
        cat <<EOF
    server {
        listen 127.0.0.1:${PORT[sendfile]};
        root $d/www;
        location /v2/$REPO/manifests/ { default_type application/vnd.oci.image.manifest.v1+json; }
    }
}
EOF
    } >"$d/nginx.conf"
    mkdir -p "$d/www/v2/$REPO/blobs" "$d/www/v2/$REPO/manifests"
    ln -f "$SEED/blob" "$d/www$BLOB_PATH" 2>/dev/null || cp "$SEED/blob" "$d/www$BLOB_PATH"
    cp "$SEED/manifest" "$d/www/v2/$REPO/manifests/$TAG"
    cp "$SEED/manifest" "$d/www/v2/$REPO/manifests/$MANIFEST_DIGEST"
    nginx -c "$d/nginx.conf" -e "$d/error.log" &
    PID[sendfile]=$!
}

url_of() { echo "http://127.0.0.1:${PORT[$1]}"; }

# (Re)starts a peer with an empty cache.
fresh() {
    local name=$1
    stop "$name"
    if [[ $name != sendfile ]]; then
        rm -rf "${WORK:?}/$name/data" "${WORK:?}/$name/cache"
    fi
    mkdir -p "$WORK/$name"
    "start_$name"
    wait_http "$name" "$(url_of "$name")/v2/"
}

# Is the blob in the peer's cache (so the next pull is a hit)?
blob_cached() {
    local hex=${BLOB_DIGEST#sha256:}
    case $1 in
    berth) [[ -f $WORK/berth/data/blobs/sha256/$hex ]] ;;
    registry) [[ $(stat -c %s "$WORK/registry/data/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data" 2>/dev/null) == "$BLOB_SIZE" ]] ;;
    nginx) [[ -n $(find "$WORK/nginx/cache" -type f -size +$((BLOB_SIZE / 1024))k 2>/dev/null) ]] ;;
    *) true ;;
    esac
}
wait_cached() {
    local i
    for ((i = 0; i < 600; i++)); do
        blob_cached "$1" && return 0
        sleep 0.1
    done
    die "$1 did not cache the blob within 60 s"
}

# One pull to /dev/null: prints "ttfb total bytes" (seconds, seconds, bytes).
pull() {
    curl -sf -o /dev/null -w '%{time_starttransfer} %{time_total} %{size_download}\n' "$1" ||
        echo "fail fail 0"
}
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else print v[int((NR + 1) / 2)]}'; }

# ---- figures -----------------------------------------------------------------------------------
declare -A R=() # R[figure,peer] = value

# Cold pull of the blob: an empty cache before every run; the origin pulled directly is the baseline.
cold_single() {
    local name=$1 url i out ttfbs=() totals=()
    for ((i = 0; i < RUNS; i++)); do
        if [[ $name == origin ]]; then url=$ORIGIN; else
            fresh "$name"
            url=$(url_of "$name")
        fi
        out=$(pull "$url$BLOB_PATH")
        read -r t tot bytes <<<"$out"
        [[ $bytes == "$BLOB_SIZE" ]] || die "$name cold pull got $bytes of $BLOB_SIZE bytes"
        ttfbs+=("$t")
        totals+=("$tot")
    done
    R[cold_s,$name]=$(printf '%s\n' "${totals[@]}" | median | awk '{printf "%.3f", $1}')
    R[cold_ttfb_ms,$name]=$(printf '%s\n' "${ttfbs[@]}" | median | awk '{printf "%.1f", $1 * 1000}')
}

# N concurrent pulls of a blob the peer does not have: wall, slowest TTFB, origin GETs.
cold_concurrent() {
    local name=$1 url before t0 t1 i d=$WORK/conc-$1
    if [[ $name == origin ]]; then url=$ORIGIN; else
        fresh "$name"
        url=$(url_of "$name")
    fi
    mkdir -p "$d"
    before=$(origin_blob_gets)
    t0=$(now)
    for ((i = 0; i < CONCURRENT; i++)); do pull "$url$BLOB_PATH" >"$d/$i" & done
    wait_children
    t1=$(now)
    R[conc_wall_s,$name]=$(elapsed "$t0" "$t1")
    R[conc_ttfb_ms,$name]=$(cat "$d"/* | awk '{if ($1 > m) m = $1} END {printf "%.1f", m * 1000}')
    local short
    short=$(cat "$d"/* | awk -v s="$BLOB_SIZE" '$3 != s' | wc -l)
    ((short == 0)) || log "WARNING: $short of $CONCURRENT concurrent pulls from $name were incomplete"
    R[conc_fail,$name]=$short
    R[conc_fetches,$name]=$(($(origin_blob_gets) - before))
}

# Waits for the background pulls started by this shell (not the servers).
wait_children() {
    local j
    for j in $(jobs -p); do
        case " ${PID[*]} " in *" $j "*) continue ;; esac
        wait "$j" || true
    done
}

# Cached blob, C clients at once, RUNS times: GB/s (all bytes / wall) and server CPU s per GB.
cached() {
    local name=$1 c=$2 url i r t0 t1 wall=0 bytes=0 cpu0 cpu1 d=$WORK/cached-$1-$2
    url=$(url_of "$name")
    mkdir -p "$d"
    cpu0=$(cpu_ticks "$name")
    for ((r = 0; r < RUNS; r++)); do
        t0=$(now)
        for ((i = 0; i < c; i++)); do pull "$url$BLOB_PATH" >"$d/$r.$i" & done
        wait_children
        t1=$(now)
        wall=$(awk -v w="$wall" -v a="$t0" -v b="$t1" 'BEGIN {print w + b - a}')
    done
    cpu1=$(cpu_ticks "$name")
    bytes=$(cat "$d"/* | awk '{s += $3} END {printf "%.0f", s}')
    ((bytes == RUNS * c * BLOB_SIZE)) || log "WARNING: $name cached x$c served $bytes bytes, expected $((RUNS * c * BLOB_SIZE))"
    R[gbps_$c,$name]=$(awk -v b="$bytes" -v w="$wall" 'BEGIN {printf "%.2f", b / w / 1e9}')
    R[cpu_$c,$name]=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v b="$bytes" 'BEGIN {printf "%.3f", t / hz / (b / 1e9)}')
}

# wrk on a cached manifest: requests/s and p99 (ms); non-2xx answers are counted, not hidden.
manifest_load() {
    local name=$1 kind=$2 url ref out
    [[ $kind == tag ]] && ref=$TAG || ref=$MANIFEST_DIGEST
    url=$(url_of "$name")
    url=$url/v2/$REPO/manifests/$ref
    # Warm the cache, and check the answer is the manifest.
    [[ $(curl -sf -H "Accept: $ACCEPT" "$url" | sha256sum | cut -d' ' -f1) == "${MANIFEST_DIGEST#sha256:}" ]] ||
        log "WARNING: $name does not serve the manifest by $kind"
    out=$(wrk -c64 -t2 -d"${WRK_SECS}s" --latency -H "Accept: $ACCEPT" "$url" 2>&1)
    echo "$out" >"$WORK/wrk-$name-$kind.txt"
    R[rps_$kind,$name]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    R[p99_$kind,$name]=$(awk '$1 == "99%" {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        f = (u == "us") ? 0.001 : (u == "s") ? 1000 : 1; printf "%.2f", v * f}' <<<"$out")
    local bad
    bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    [[ -z $bad ]] || {
        log "WARNING: $name manifest by $kind: $bad non-2xx answers"
        R[rps_$kind,$name]="${R[rps_$kind,$name]} ($bad non-2xx)"
    }
}

# ---- run ---------------------------------------------------------------------------------------
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "peers: ${PEERS[*]}; blob ${BLOB_MIB} MiB, $RUNS run(s) per figure, $CONCURRENT concurrent cold pulls"
start_sendfile
wait_http sendfile "$(url_of sendfile)/"

for name in origin berth registry nginx sendfile; do
    log "$name: cold pull x$RUNS"
    cold_single "$name"
    log "$name: $CONCURRENT concurrent cold pulls"
    cold_concurrent "$name"
    if [[ $name != origin ]]; then
        wait_cached "$name"
    fi
    before=$(origin_blob_gets)
    log "$name: cached blob, 1 and 8 clients"
    cached "$name" 1
    cached "$name" 8
    R[cached_origin_gets,$name]=$(($(origin_blob_gets) - before))
    log "$name: cached manifest by tag and by digest (wrk -c64 -t2 -d${WRK_SECS}s)"
    manifest_load "$name" tag
    manifest_load "$name" digest
    R[rss,$name]=$(peak_rss_mib "$name")
    # One server at a time: the next peer's rows are not slowed by this one's background work.
    [[ $name == origin ]] || stop "$name"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ------------------------------------------------------------------------------------
ratio() { # berth / peer, for two numbers
    awk -v a="$1" -v b="$2" 'BEGIN {if (a + 0 == 0 || b + 0 == 0 || a !~ /^[0-9.]+/ || b !~ /^[0-9.]+/) print "–"; else printf "%.2f", a / b}'
}
row() { # label key [peers...]
    local label=$1 key=$2 p line
    line="| $label | ${R[$key,berth]:-–}"
    for p in origin registry nginx sendfile; do line+=" | ${R[$key,$p]:-–}"; done
    for p in origin registry nginx sendfile; do line+=" | $(ratio "${R[$key,berth]:-}" "${R[$key,$p]:-}")"; done
    echo "$line |"
}
mkdir -p "$(dirname "$OUT")"
{
    echo "Run $(date -u +%Y-%m-%dT%H:%MZ), HEAD $COMMIT (berth sources at $SRC_COMMIT$DIRTY), $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), blob ${BLOB_MIB} MiB, $RUNS run(s) per figure (median), wrk ${WRK_SECS}s$( ((QUICK)) && echo ', --quick'). Load average before: $LOAD_BEFORE, after: $LOAD_AFTER."
    echo
    echo "| figure | berth | origin (direct) | registry proxy | nginx proxy_cache | nginx sendfile | berth/origin | berth/registry | berth/nginx | berth/sendfile |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    row "cold pull: total s" cold_s
    row "cold pull: TTFB ms" cold_ttfb_ms
    row "$CONCURRENT cold pulls: wall s" conc_wall_s
    row "$CONCURRENT cold pulls: slowest TTFB ms" conc_ttfb_ms
    row "$CONCURRENT cold pulls: upstream fetches" conc_fetches
    row "$CONCURRENT cold pulls: incomplete" conc_fail
    row "cached blob, 1 client: GB/s" gbps_1
    row "cached blob, 8 clients: GB/s" gbps_8
    row "cached blob, 1 client: server CPU s/GB" cpu_1
    row "cached blob, 8 clients: server CPU s/GB" cpu_8
    row "cached blob runs: upstream fetches" cached_origin_gets
    row "manifest by tag, 64 conns: req/s" rps_tag
    row "manifest by tag: p99 ms" p99_tag
    row "manifest by digest, 64 conns: req/s" rps_digest
    row "manifest by digest: p99 ms" p99_digest
    row "peak RSS MiB (VmHWM, largest process)" rss
    echo
    echo "origin = the docker-registry the peers pull from, pulled directly (its cold rows are the baseline; its \"upstream fetches\" count its own GETs). sendfile has no cold state: its cold rows are reads of a page-cached file, the ceiling."
} >"$OUT"
cat "$OUT"
log "table written to $OUT"
