#!/usr/bin/env bash
# Makes a busybox base image offline, from Debian's busybox-static package:
# /bin/busybox, a symlink per applet (`busybox --install -s`), /etc/passwd
# and /etc/group (root, uid 1000 "user", nobody), /tmp. rbuild itself builds
# it (it needs no RUN), into the store as busybox:latest and, if DEST is
# given, as an OCI layout there (for `--build-context busybox=oci-layout://DEST`).
#
#   testdata/busybox/make.sh [DEST]        (apt-get install busybox-static first)
set -euo pipefail
rbuild=${RBUILD:-rbuild}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "error: $busybox not found: apt-get install busybox-static" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/home/user" "$root/tmp" "$root/var/tmp"
cp "$busybox" "$root/bin/busybox"
"$busybox" --install -s "$root/bin"
# The links point at wherever busybox was on this host; inside the image it is /bin/busybox.
for l in "$root"/bin/*; do
    [ -L "$l" ] && ln -sf /bin/busybox "$l"
done
chmod 1777 "$root/tmp" "$root/var/tmp"
cat > "$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$root/etc/group" <<'G'
root:x:0:
user:x:1000:
nobody:x:65534:
G
printf 'FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n' > "$work/Dockerfile"
args=(-t busybox:latest --progress=quiet)
if [ "${1:-}" != "" ]; then
    mkdir -p "$1"
    args+=(-o "type=oci,dest=$work/layout.tar,compression=uncompressed,name=busybox:latest")
fi
"$rbuild" build "${args[@]}" "$work" >/dev/null
if [ "${1:-}" != "" ]; then
    tar -xf "$work/layout.tar" -C "$1"
    echo "busybox OCI layout in $1 (tag latest)" >&2
fi
