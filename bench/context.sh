#!/usr/bin/env bash
# A 20,000-file, 1 GiB build context copied into an image: the cold build,
# then a rebuild of the unchanged context, which must read no file content
# (the checksum memo's counters, from --metadata-file, show it).
#
#   bench/context.sh [WORKDIR]      (needs ~2.5 GiB free; WORKDIR defaults to a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
rbuild="$PWD/target/release/rbuild"
work="${1:-$(mktemp -d)}"
ctx="$work/context"
export RBUILD_ROOT="$work/store"

if [ ! -f "$ctx/.complete" ]; then
    echo "generating 20,000 files (1 GiB) in $ctx ..." >&2
    rm -rf "$ctx"
    mkdir -p "$ctx"
    for d in $(seq -w 0 99); do
        mkdir -p "$ctx/dir$d"
        # 200 files of 53,687 bytes each: 100 dirs x 200 = 20,000 files, 1 GiB.
        head -c $((200 * 53687)) /dev/urandom | split -b 53687 -d -a 3 - "$ctx/dir$d/f"
    done
    printf 'FROM scratch\nCOPY . /app\n' > "$ctx/Dockerfile"
    touch "$ctx/.complete"
fi
rm -rf "$RBUILD_ROOT"

run() {
    local label=$1
    local start end
    start=$(date +%s.%N)
    "$rbuild" build --progress=quiet --metadata-file "$work/$label.json" "$ctx" >/dev/null
    end=$(date +%s.%N)
    local secs
    secs=$(echo "$end - $start" | bc)
    local stats
    stats=$(tr -d '\n ' < "$work/$label.json" | grep -o '"rbuild.context":{[^}]*}' | sed 's/"rbuild.context"://' || true)
    printf '| %-22s | %7.2f s | %s |\n' "$label" "$secs" "$stats"
}

echo "| build                  |    time   | context reads |"
echo "|------------------------|-----------|---------------|"
run cold
run unchanged
touch "$ctx"/dir00/*
run mtime-only-touch
echo "x" >> "$ctx/dir42/f007"
run one-file-edit
