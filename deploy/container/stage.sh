#!/usr/bin/env bash
# Stages the root filesystem of berth's container image under target/container/, for
# deploy/container/Containerfile to COPY (a build cannot reach files outside its context, and no
# base image can be pulled here, so the image is built FROM scratch out of exactly this):
#
#   target/container/rootfs/   /usr/local/bin/berth, the libraries `ldd` names (glibc's loader,
#                              libc, libm, libgcc_s), /etc/passwd + /etc/group with the berth
#                              user (uid/gid 10001), /etc/nsswitch.conf, /etc/berth/config.toml
#   target/container/cache/    the empty cache directory, COPY'd to /var/lib/berth as that user
#
# Then, from the repository root:
#   bash deploy/container/stage.sh
#   podman build --format docker -f deploy/container/Containerfile -t berth .
#
# BERTH_BIN=path uses that binary instead of building `cargo build --release` (the test uses the
# debug binary it already has). Debug info is stripped from the copy; symbols stay for backtraces.
# No CA bundle: berth trusts the web PKI roots compiled into it (webpki-roots); a private CA goes
# in an upstream's `ca_file`, mounted with the config.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${BERTH_BIN:-}
if [[ -z $bin ]]; then
    cargo build --release --locked --bin berth
    bin=target/release/berth
fi

out=target/container
rm -rf "$out"
mkdir -p "$out/rootfs/usr/local/bin" "$out/rootfs/etc/berth" "$out/cache"
cp "$bin" "$out/rootfs/usr/local/bin/berth"
strip --strip-debug "$out/rootfs/usr/local/bin/berth"
chmod 0755 "$out/rootfs/usr/local/bin/berth"

# Every shared object the binary loads, at the path the loader looks for it (`/lib64/ld-linux...`
# as the ELF interpreter, the others as ldd resolved them), copied as files, not symlinks.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
if [[ -z $libs ]]; then
    echo "stage.sh: ldd found no libraries in $bin (a static binary needs none; check it)" >&2
fi
for lib in $libs; do
    mkdir -p "$out/rootfs$(dirname "$lib")"
    cp -L "$lib" "$out/rootfs$lib"
done

cat >"$out/rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
berth:x:10001:10001:berth:/var/lib/berth:/sbin/nologin
PASSWD
cat >"$out/rootfs/etc/group" <<'GROUP'
root:x:0:
berth:x:10001:
GROUP
# glibc resolves names with these built in (2.34+); say so rather than rely on its default order.
echo "hosts: files dns" >"$out/rootfs/etc/nsswitch.conf"
cp deploy/container/config.toml "$out/rootfs/etc/berth/config.toml"

echo "stage.sh: staged $(du -sh "$out" | cut -f1) in $out; now: podman build --format docker -f deploy/container/Containerfile -t berth ."
