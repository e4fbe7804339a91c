#!/usr/bin/env bash
# 20 small RUN steps (each writes a small file) on the busybox base, built
# cold (fresh store) and warm (unchanged rebuild), by rbuild and by
# `buildah build --layers --isolation chroot` on this machine. Prints a
# markdown table of medians over RUNS runs (default 3), the per-step cost
# (cold time / 20) and buildah/rbuild ratios.
#
#   bench/run_steps.sh          (root; needs busybox-static and buildah)
#
# The base is testdata/busybox/make.sh's OCI layout: rbuild imports it with
# `--build-context busybox=oci-layout://DIR:latest`, buildah with
# `FROM oci:DIR:latest`, so both cold builds include importing the base.
# RBUILD=path picks the rbuild binary (default: a release build);
# BUILDAH_DRIVER picks buildah's storage driver (default overlay).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
steps=20
if [ -z "${RBUILD:-}" ]; then
    cargo build --release --locked -q
    RBUILD="$PWD/target/release/rbuild"
fi
driver=${BUILDAH_DRIVER:-overlay}
command -v buildah >/dev/null || { echo "error: buildah is not installed" >&2; exit 1; }

# (lowercase: buildah parses `oci:DIR` as an image reference)
work=/var/tmp/rbuild-bench-$$
rm -rf "$work" && mkdir -p "$work"
cleanup() {
    buildah --root "$work/bh-root" --runroot "$work/bh-runroot" --storage-driver "$driver" \
        rm --all >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

RBUILD="$RBUILD" RBUILD_ROOT="$work/bb-store" testdata/busybox/make.sh "$work/busybox" 2>/dev/null
ctx="$work/ctx"
mkdir -p "$ctx"
{
    echo "FROM busybox"
    for i in $(seq 1 $steps); do echo "RUN echo step $i > /f$i"; done
} > "$ctx/Dockerfile"
sed "s|^FROM busybox|FROM oci:$work/busybox:latest|" "$ctx/Dockerfile" > "$ctx/Dockerfile.buildah"

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

rbuild_once() {
    "$RBUILD" build --progress=quiet -t bench:latest \
        --build-context "busybox=oci-layout://$work/busybox:latest" "$ctx" >/dev/null
}

buildah_once() {
    buildah --root "$work/bh-root" --runroot "$work/bh-runroot" --storage-driver "$driver" \
        build --layers --isolation chroot -q -t bench -f "$ctx/Dockerfile.buildah" "$ctx" >/dev/null
}

fresh_buildah() {
    buildah --root "$work/bh-root" --runroot "$work/bh-runroot" --storage-driver "$driver" \
        rm --all >/dev/null 2>&1 || true
    rm -rf "$work/bh-root" "$work/bh-runroot"
}

declare -A cold warm
for tool in rbuild buildah; do
    : > "$work/$tool.cold"
    : > "$work/$tool.warm"
    for _ in $(seq 1 "$runs"); do
        if [ $tool = rbuild ]; then
            export RBUILD_ROOT="$work/rb-store"
            rm -rf "$RBUILD_ROOT"
        else
            fresh_buildah
        fi
        t0=$(now); ${tool}_once; t1=$(now); ${tool}_once; t2=$(now)
        echo "$t1 - $t0" | bc >> "$work/$tool.cold"
        echo "$t2 - $t1" | bc >> "$work/$tool.warm"
    done
    cold[$tool]=$(median < "$work/$tool.cold")
    warm[$tool]=$(median < "$work/$tool.warm")
done

ms() { printf '%.0f ms' "$(echo "$1 * 1000" | bc -l)"; }
ratio() { printf '%.1f×' "$(echo "$1 / $2" | bc -l)"; }

echo "$steps RUN steps on busybox, median of $runs runs ($(nproc) cores, $(uname -r); buildah $(buildah --version | awk '{print $3}'), --storage-driver $driver)"
echo
echo "| builder | cold (fresh store) | warm (no change) | per RUN step, cold |"
echo "|---|---:|---:|---:|"
for tool in rbuild buildah; do
    label=$tool
    [ $tool = buildah ] && label="buildah --layers --isolation chroot"
    echo "| $label | $(ms "${cold[$tool]}") | $(ms "${warm[$tool]}") | $(ms "$(echo "${cold[$tool]} / $steps" | bc -l)") |"
done
echo "| buildah ÷ rbuild | $(ratio "${cold[buildah]}" "${cold[rbuild]}") | $(ratio "${warm[buildah]}" "${warm[rbuild]}") | |"
