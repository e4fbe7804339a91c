#!/usr/bin/env bash
# Registry push and pull of a ~500 MB image (LAYERS layers of LAYER_MB MB of
# random data each, so gzip cannot shrink it), rbuild against skopeo, both
# talking to Debian's docker-registry on a free loopback port (plain http).
# Every push goes to a fresh, empty registry, so no blob is skipped; every
# pull goes into a fresh store / layout. Prints a markdown table: seconds,
# MB/s (compressed bytes moved / time) and the skopeo/rbuild ratio.
#
#   bench/registry.sh            (needs docker-registry, skopeo; ~3 GB free in /var/tmp)
#
# What each row compares (both sides do the same work):
#   push, compress   rbuild push of a store image (layers stored uncompressed: gzip on the
#                    way out) vs skopeo copy of an uncompressed OCI layout (skopeo gzips too)
#   push, gzip ready rbuild push of an image the store already exported as gzip (rbuild
#                    reuses the compressed blobs it remembers, if it does) vs skopeo copy of
#                    that gzip OCI layout (copied as is, no recompression)
#   pull             rbuild pull (download and verify the gzip blobs into the store; layers
#                    are unpacked when a build first uses them) vs skopeo copy docker:// -> oci:
#                    with --dest-decompress (skopeo does more work here: it decompresses)
#   pull, keep gzip  the same rbuild pull vs skopeo copy docker:// -> oci: keeping the gzip
#                    blobs (both sides do the same work: the fair row)
#
# LAYERS (default 5) and LAYER_MB (default 100) size the image; RBUILD=path picks the
# rbuild binary (default: a release build); SKIP_RBUILD=1 measures skopeo only.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${LAYERS:-5}
layer_mb=${LAYER_MB:-100}
skip_rbuild=${SKIP_RBUILD:-0}
if [ -z "${RBUILD:-}" ]; then
    cargo build --release --locked -q
    RBUILD="$PWD/target/release/rbuild"
fi
registry_bin=/usr/bin/docker-registry
[ -x "$registry_bin" ] || { echo "error: $registry_bin missing: apt-get install docker-registry" >&2; exit 1; }
command -v skopeo >/dev/null || { echo "error: skopeo is not installed" >&2; exit 1; }

work=/var/tmp/rbuild-bench-registry-$$
rm -rf "$work" && mkdir -p "$work"
reg_pid=""
stop_registry() {
    if [ -n "$reg_pid" ]; then
        kill "$reg_pid" 2>/dev/null || true
        wait "$reg_pid" 2>/dev/null || true
        reg_pid=""
    fi
}
cleanup() {
    stop_registry
    rm -rf "$work"
}
trap cleanup EXIT

# Neither tool may read the host's credentials.
export DOCKER_CONFIG="$work/docker-config"
mkdir -p "$DOCKER_CONFIG"
echo '{"auths":{}}' > "$DOCKER_CONFIG/config.json"
export REGISTRY_AUTH_FILE="$DOCKER_CONFIG/config.json"
export NO_COLOR=1
unset BUILDKIT_PROGRESS SOURCE_DATE_EPOCH

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_registry NAME: a registry with fresh storage $work/reg-NAME; sets $host.
start_registry() {
    stop_registry
    local dir="$work/reg-$1" port tries
    rm -rf "$dir" && mkdir -p "$dir/storage"
    for tries in 1 2 3 4 5; do
        port=$(free_port)
        cat > "$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: rbuild-bench
EOF
        env -i PATH=/usr/bin:/bin "$registry_bin" serve "$dir/config.yml" >"$dir/log" 2>&1 &
        reg_pid=$!
        for _ in $(seq 1 200); do
            if curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null; then
                host="127.0.0.1:$port"
                return 0
            fi
            kill -0 "$reg_pid" 2>/dev/null || break
            sleep 0.05
        done
        stop_registry
    done
    echo "error: docker-registry did not start:" >&2
    cat "$dir/log" >&2
    exit 1
}

now() { date +%s.%N; }
secs=0
# timed LOG CMD...: runs CMD (output to LOG), sets $secs.
timed() {
    local log=$1 start end
    shift
    start=$(now)
    if ! "$@" >"$log" 2>&1; then
        echo "error: failed: $*" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    end=$(now)
    secs=$(echo "$end - $start" | bc -l)
}

# --- the image --------------------------------------------------------------
echo "generating $layers x $layer_mb MB of random data ..." >&2
ctx="$work/ctx"
mkdir -p "$ctx"
{
    echo "FROM scratch"
    for i in $(seq 1 "$layers"); do
        head -c $((layer_mb << 20)) /dev/urandom > "$ctx/layer$i.bin"
        echo "COPY layer$i.bin /layer$i.bin"
    done
} > "$ctx/Dockerfile"

echo "building it with rbuild (stores and OCI layouts) ..." >&2
# Store A: only built (layers uncompressed, never compressed): push must gzip.
RBUILD_ROOT="$work/store-a" "$RBUILD" build --progress=quiet -t bench:1 "$ctx" >/dev/null
# Store B: built and exported as gzip (the same image): push may reuse the gzip blobs.
RBUILD_ROOT="$work/store-b" "$RBUILD" build --progress=quiet -t bench:1 \
    -o "type=oci,dest=$work/gzip.tar,name=bench:1" "$ctx" >/dev/null
RBUILD_ROOT="$work/store-b" "$RBUILD" build --progress=quiet -t bench:1 \
    -o "type=oci,dest=$work/plain.tar,name=bench:1,compression=uncompressed" "$ctx" >/dev/null
mkdir -p "$work/gzip" "$work/plain"
tar -xf "$work/gzip.tar" -C "$work/gzip"
tar -xf "$work/plain.tar" -C "$work/plain"
rm -f "$work/gzip.tar" "$work/plain.tar"
# Bytes the registry moves: the gzip layers (random data: about the raw size).
moved=$(find "$work/gzip/blobs" -type f -size +1M -printf '%s\n' | awk '{s+=$1} END {print s}')
mb=$(echo "$moved / 1048576" | bc -l)

# --- measurements -----------------------------------------------------------
declare -A rb sk
skopeo_push() { # SRC_LAYOUT DEST (the layout's only image)
    skopeo copy --quiet --dest-tls-verify=false "oci:$1" "docker://$2"
}

echo "push, layers to compress ..." >&2
start_registry skopeo-push-compress
timed "$work/sk1.log" skopeo_push "$work/plain" "$host/bench-skopeo:1"
sk[push_compress]=$secs
if [ "$skip_rbuild" != 1 ]; then
    start_registry rbuild-push-compress
    timed "$work/rb1.log" env RBUILD_ROOT="$work/store-a" \
        "$RBUILD" push --progress=plain bench:1 "$host/bench:1"
    rb[push_compress]=$secs
fi

echo "push, gzip blobs ready ..." >&2
start_registry skopeo-push-gzip
timed "$work/sk2.log" skopeo_push "$work/gzip" "$host/bench-skopeo:1"
sk[push_gzip]=$secs
if [ "$skip_rbuild" != 1 ]; then
    start_registry rbuild-push-gzip
    timed "$work/rb2.log" env RBUILD_ROOT="$work/store-b" \
        "$RBUILD" push --progress=plain bench:1 "$host/bench:1"
    rb[push_gzip]=$secs
fi

echo "pull ..." >&2
# The registry to pull from holds the gzip image (as skopeo pushed it: the same
# blobs rbuild exported), so both pull exactly the same bytes.
start_registry pull-source
skopeo_push "$work/gzip" "$host/bench:1" >/dev/null
timed "$work/sk3.log" skopeo copy --quiet --src-tls-verify=false --dest-decompress \
    "docker://$host/bench:1" "oci:$work/pulled-skopeo-decompressed:bench"
sk[pull]=$secs
timed "$work/sk4.log" skopeo copy --quiet --src-tls-verify=false \
    "docker://$host/bench:1" "oci:$work/pulled-skopeo:bench"
sk[pull_gzip]=$secs
rm -rf "$work/pulled-skopeo-decompressed" "$work/pulled-skopeo"
if [ "$skip_rbuild" != 1 ]; then
    timed "$work/rb3.log" env RBUILD_ROOT="$work/pull-store-1" \
        "$RBUILD" pull --progress=plain "$host/bench:1"
    rb[pull]=$secs
    rm -rf "$work/pull-store-1"
    timed "$work/rb4.log" env RBUILD_ROOT="$work/pull-store-2" \
        "$RBUILD" pull --progress=plain "$host/bench:1"
    rb[pull_gzip]=$secs
    rm -rf "$work/pull-store-2"
fi
stop_registry

# --- the table --------------------------------------------------------------
rate() { [ -n "$1" ] && printf '%.0f' "$(echo "$mb / $1" | bc -l)" || printf -- '-'; }
row() { # LABEL KEY
    local r=${rb[$2]:-} s=${sk[$2]:-} ratio='-' rs='-'
    if [ -n "$r" ]; then
        rs=$(printf '%.2f s' "$r")
        ratio=$(printf '%.2fx' "$(echo "$s / $r" | bc -l)")
    fi
    printf '| %-24s | %9s | %9s | %11s | %11s | %13s |\n' "$1" "$rs" "$(printf '%.2f s' "$s")" \
        "$(rate "$r")" "$(rate "$s")" "$ratio"
}
echo
printf 'image: %d layers x %d MB random data, %.0f MB gzip; registry: docker-registry %s on 127.0.0.1 (plain http)\n\n' \
    "$layers" "$layer_mb" "$mb" "$("$registry_bin" --version | awk '{print $3}')"
printf '| %-24s | %9s | %9s | %11s | %11s | %13s |\n' operation rbuild skopeo "rbuild MB/s" "skopeo MB/s" skopeo/rbuild
echo "|--------------------------|----------:|----------:|------------:|------------:|--------------:|"
row "push, compress"   push_compress
row "push, gzip ready" push_gzip
row "pull"             pull
row "pull, skopeo keeps gzip" pull_gzip
cat <<'EOF'

push, compress:   rbuild gzips the store's uncompressed layers; skopeo gzips an uncompressed OCI layout.
push, gzip ready: rbuild pushes an image it already exported as gzip (reusing those blobs if it
                  remembers them); skopeo copies the gzip OCI layout as is.
pull:             rbuild downloads and verifies the gzip blobs into its store (unpacked when a
                  build uses them); skopeo --dest-decompress also decompresses (more work).
pull, keep gzip:  rbuild as above; skopeo keeps the gzip blobs: the same work on both sides.
Every push goes to an empty registry (nothing skipped), every pull into an empty store/layout.
EOF
