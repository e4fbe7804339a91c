#!/usr/bin/env bash
# The build cache in the edit-rebuild loop (issue 6): four generated projects
# built by rbuild, `buildah build --layers --isolation chroot` and BuildKit
# (dockerd's, `DOCKER_BUILDKIT=1 docker build`), each through five scenarios:
#
#   cold        empty cache / store (base image pulled from the local registry too)
#   no-change   the same build again
#   touch       one context file's mtime changed, content the same
#   edit        one file a COPY selects changed (invalidates a middle step and all after)
#   last        the Dockerfile's last instruction changed (only that step re-runs)
#
# Each scenario runs RUNS times (cold, then the four rebuilds, in a fresh store each
# time); the table shows median wall time, builder ratios and peak memory. The table
# goes to stdout, progress to stderr.
#
#   bench/cache.sh        (root; ~12 GiB free in WORK_PARENT for the context project, else it is skipped)
#   RUNS=1 PROJECTS="parallel long" BUILDERS="rbuild buildah" bench/cache.sh
#
# Projects (generated into a temp dir, same content every time):
#   context   busybox multi-stage, a 20,000-file 1 GiB context (19,978 small files and
#             20 large ones): COPY deps, RUN, COPY . ., RUN; final stage COPY --from, RUN
#   parallel  four independent stages, each COPY a 32 MiB file, `sleep 1`, sha256sum it;
#             a final stage copies the four sums
#   debian    debian:bookworm base, apt-get install jq (from Debian's mirror), COPY app/
#   long      60 instructions on busybox: RUN, COPY, ENV, WORKDIR, LABEL, ARG
#
# Environment:
#   RUNS=3                       repetitions per scenario (the median is reported)
#   PROJECTS="context parallel debian long"
#   BUILDERS="rbuild buildah buildkit"
#   RBUILD=path                  the rbuild binary (default: a release build of this repo)
#   REGISTRY=127.0.0.1:5000      where busybox:latest and debian:bookworm are
#   PEERS_SETUP=path             ../shared/tools/peers-setup.sh; run with `up` when the
#                                registry (or dockerd, for buildkit) is not up; PEERS_SETUP=
#                                (empty) never starts anything
#   DOCKER=/usr/bin/docker       docker 20.10 CLI (/usr/local/bin/docker 28.x has no buildx
#                                and silently falls back to the legacy builder)
#   BUILDAH_DRIVER=overlay       buildah's storage driver; BUILDAH_ARGS="--jobs 2" adds flags
#   WORK_PARENT=/var/tmp         where the temp dir (projects, stores) goes
#
# Every timed build starts after an (untimed) `sync`, so no builder pays for the disk
# writeback of the build before it.
#
# Memory: rbuild and buildah: max RSS of the builder and every process it waited for
# (`/usr/bin/time -f %M`, so RUN processes count). BuildKit: dockerd's peak RSS during the
# build (its VmHWM, reset with `echo 5 > /proc/PID/clear_refs` before each build; dockerd
# runs BuildKit in-process, RUN containers are runc processes outside it), plus the docker
# client's max RSS in parentheses (the client walks and sends the context).
#
# BuildKit cold runs call `docker builder prune -af`: this empties the whole dockerd's
# build cache, not only this benchmark's.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=${RUNS:-3}
projects=${PROJECTS:-context parallel debian long}
builders=${BUILDERS:-rbuild buildah buildkit}
registry=${REGISTRY:-127.0.0.1:5000}
peers_setup=${PEERS_SETUP-$(realpath -m "$repo/../shared/tools/peers-setup.sh")}
docker=${DOCKER:-/usr/bin/docker}
driver=${BUILDAH_DRIVER:-overlay}
read -r -a buildah_extra <<< "${BUILDAH_ARGS:-}"
scenarios=(cold no-change touch edit last)

log() { echo "[cache.sh] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
now() { date +%s.%N; }
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$runs'"
for p in $projects; do
    case $p in context|parallel|debian|long) ;; *) die "unknown project '$p' (context parallel debian long)";; esac
done
for b in $builders; do
    case $b in rbuild|buildah|buildkit) ;; *) die "unknown builder '$b' (rbuild buildah buildkit)";; esac
done
[[ $(id -u) == 0 ]] || log "warning: not root: buildah/docker/peers-setup may not work"

# --- tools ---------------------------------------------------------------------------
timebin=/usr/bin/time
if [[ ! -x $timebin ]]; then
    log "installing GNU time (apt-get install time) ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null 2>&1 \
        || die "/usr/bin/time is missing and apt-get install time failed"
fi
command -v python3 >/dev/null || die "python3 is needed to generate the projects"

declare -A skip_builder=()   # builder -> reason it is skipped
notes=()                     # footnotes printed under the table
want() { [[ " $builders " == *" $1 "* ]]; }

if want rbuild; then
    if [[ -z ${RBUILD:-} ]]; then
        log "cargo build --release ..."
        if ! cargo build --release --locked -q >&2; then
            [[ -x target/release/rbuild ]] || die "cargo build --release failed and there is no rbuild binary"
            log "warning: cargo build --release failed: using the existing target/release/rbuild"
            notes+=("rbuild: \`cargo build --release\` failed; the existing target/release/rbuild was measured.")
        fi
        RBUILD=$repo/target/release/rbuild
    fi
    [[ -x $RBUILD ]] || die "RBUILD=$RBUILD is not executable"
fi
if want buildah && ! command -v buildah >/dev/null; then
    skip_builder[buildah]="buildah is not installed"
fi

registry_up() { curl -fsS -m 5 -o /dev/null "http://$registry/v2/" 2>/dev/null; }
dockerd_up() { [[ -x $docker ]] && "$docker" info >/dev/null 2>&1; }
if ! registry_up || { want buildkit && ! dockerd_up; }; then
    if [[ -n $peers_setup && -f $peers_setup && $registry == 127.0.0.1:5000 ]]; then
        log "bringing the peers up: bash $peers_setup up"
        bash "$peers_setup" up >&2 || log "warning: peers-setup.sh up failed"
    fi
fi
registry_up || die "no registry at http://$registry (run: bash $peers_setup up)"
has_tag() { curl -fsS -m 5 "http://$registry/v2/$1/tags/list" 2>/dev/null | grep -q "\"$2\""; }
has_tag busybox latest || die "$registry has no busybox:latest (run: bash $peers_setup up)"
if want buildkit && ! dockerd_up; then
    skip_builder[buildkit]="dockerd is not running (\`$docker info\` fails)"
fi

declare -A skip_project=()
if [[ " $projects " == *" debian "* ]]; then
    if ! has_tag debian bookworm; then
        skip_project[debian]="$registry has no debian:bookworm"
    else
        # The base's apt sources name deb.debian.org (peers-setup.sh debootstraps from the
        # host's mirror); builds use the host's network, so probe it from here.
        mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        mirror=${mirror:-http://deb.debian.org/debian}
        if ! curl -fsS -m 15 -o /dev/null ${http_proxy:+--proxy "$http_proxy"} "$mirror/dists/bookworm/InRelease"; then
            skip_project[debian]="Debian's mirror ($mirror) is not reachable from this machine, so apt-get cannot run in a build"
        fi
    fi
fi

# Proxy settings, if the host has any, go to every build (Docker's predefined ARGs).
build_args=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    if [[ -n ${!v:-} ]]; then build_args+=(--build-arg "$v=${!v}"); fi
done

started=$(now)

# --- work dir and cleanup ------------------------------------------------------------
mkdir -p "${WORK_PARENT:-/var/tmp}"
work=$(mktemp -d "${WORK_PARENT:-/var/tmp}/rbuild-bench-cache.XXXXXX")
tag_prefix=rbuild-bench-cache-$$
buildah_g() { buildah --root "$work/bh-root" --runroot "$work/bh-runroot" --storage-driver "$driver" "$@"; }
wipe_buildah() {
    [[ -d $work/bh-root ]] || return 0
    buildah_g rm --all >/dev/null 2>&1 || true
    buildah_g rmi --all --force >/dev/null 2>&1 || true
    # a store whose layers are still mounted cannot be removed; unmount what is left
    { grep -o " $work/bh-r[^ ]*" /proc/mounts 2>/dev/null || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$work/bh-root" "$work/bh-runroot"
}
# Every image BuildKit made (each rebuild leaves the previous one dangling, and
# `builder prune` does not remove images): removed at each cold start and at exit.
wipe_docker() {
    local ids=()
    [[ -s $work/docker-images ]] && mapfile -t ids < <(sort -u "$work/docker-images")
    if ((${#ids[@]})); then "$docker" rmi -f "${ids[@]}" >/dev/null 2>&1 || true; fi
    : > "$work/docker-images"
}
cleanup() {
    local rc=$?
    set +e
    log "cleaning up $work ..."
    wipe_buildah
    if [[ -s $work/docker-images ]] && dockerd_up; then
        wipe_docker
        "$docker" builder prune -af >/dev/null 2>&1
    fi
    rm -rf "$work"
    log "the peers (registry, dockerd) are left running; stop them with: bash ${peers_setup:-/work/shared/tools/peers-setup.sh} down"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- projects --------------------------------------------------------------------------
# Each project is $work/proj/NAME: Dockerfile (outside the context, passed with -f, so
# editing it never touches a COPY . .) and ctx/. Its Dockerfile's last line is always
# `RUN echo "last N" > /last.txt`; edit_file and touch_file name files in ctx/.
declare -A edit_file touch_file describe
describe[context]='busybox multi-stage, 20,000-file 1 GiB context (COPY . ., RUN, COPY --from)'
describe[parallel]='4 independent stages (COPY 32 MiB, sleep 1, sha256sum) + final stage'
describe[debian]='debian:bookworm, apt-get install jq, COPY app/ (300 files), RUN'
describe[long]='60 instructions on busybox (RUN, COPY, ENV, WORKDIR, LABEL, ARG)'

gen_files() { # gen_files KIND DIR: deterministic file trees (python: fast, seeded)
    python3 - "$@" <<'PY'
import os, random, sys
kind, root = sys.argv[1], sys.argv[2]

def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)

def random_file(path, size, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        while size > 0:
            n = min(size, 1 << 20)
            f.write(rng.randbytes(n))
            size -= n

if kind == "context":
    # 19,978 small files (0.5-48 KiB) in 100 packages, 20 large assets, deps.txt and
    # src/main.c: 20,000 files, exactly 1 GiB.
    rng = random.Random(20000)
    deps = "".join(f"lib{(i * 7919) % 1000:03d}==1.{i % 10}\n" for i in range(200)).encode()
    main = b'#include <stdio.h>\n#define VERSION "0"\nint main(void) { puts(VERSION); return 0; }\n'
    write(f"{root}/deps.txt", deps)
    write(f"{root}/src/main.c", main)
    total = len(deps) + len(main)
    for i in range(19978):
        size = rng.randint(512, 48 << 10)
        random_file(f"{root}/pkg{i % 100:02d}/m{i:05d}.dat", size, rng)
        total += size
    rest = (1 << 30) - total
    for i in range(20):
        size = rest // 20 + (rest % 20 if i == 19 else 0)
        random_file(f"{root}/assets/blob{i:02d}.bin", size, rng)
elif kind == "parallel":
    rng = random.Random(4)
    for s in "abcd":
        random_file(f"{root}/data/{s}.bin", 32 << 20, rng)
elif kind == "debian":
    rng = random.Random(300)
    words = ["alpha", "beta", "gamma", "delta", "render", "parse", "cache", "layer", "index", "store"]
    for i in range(299):
        lines = [f"def f{i}_{j}(x):\n    return x * {rng.randint(1, 999)}  # {rng.choice(words)}\n" for j in range(rng.randint(5, 120))]
        write(f"{root}/app/mod{i // 50}/m{i:03d}.py", "".join(lines).encode())
    write(f"{root}/app/config.json", b'{"name": "app", "version": "0", "workers": 4, "debug": false}\n')
elif kind == "long":
    for i in range(1, 61):
        write(f"{root}/files/f{i:02d}.txt", f"file {i}\n".encode() * (i * 10))
PY
}

gen_context() {
    local p=$1
    gen_files context "$p/ctx"
    cat > "$p/Dockerfile" <<EOF
FROM $registry/busybox:latest AS build
WORKDIR /src
COPY deps.txt ./
RUN sort deps.txt > /deps.lock
COPY . .
RUN find . -type f | wc -l > /build.count && sha256sum src/main.c > /build.sum
FROM $registry/busybox:latest
COPY --from=build /deps.lock /build.count /build.sum /meta/
COPY --from=build /src /app
RUN ls -R /app | wc -l > /meta/entries
RUN echo "last 0" > /last.txt
EOF
    edit_file[context]=src/main.c
    touch_file[context]=pkg42/m04242.dat
}

gen_parallel() {
    local p=$1 s
    gen_files parallel "$p/ctx"
    {
        for s in a b c d; do
            echo "FROM $registry/busybox:latest AS $s"
            echo "COPY data/$s.bin /in.bin"
            echo "RUN sleep 1 && sha256sum /in.bin > /out.sum"
        done
        echo "FROM $registry/busybox:latest"
        for s in a b c d; do echo "COPY --from=$s /out.sum /sums/$s.sum"; done
        echo 'RUN cat /sums/*.sum > /sums/all && wc -l /sums/all'
        echo 'RUN echo "last 0" > /last.txt'
    } > "$p/Dockerfile"
    edit_file[parallel]=data/b.bin
    touch_file[parallel]=data/c.bin
}

gen_debian() {
    local p=$1
    gen_files debian "$p/ctx"
    cat > "$p/Dockerfile" <<EOF
FROM $registry/debian:bookworm
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends jq && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY app/ /app/
RUN jq -c . config.json > config.min.json && find . -type f | wc -l > files.count
RUN echo "last 0" > /last.txt
EOF
    edit_file[debian]=app/config.json
    touch_file[debian]=app/mod3/m150.py
}

gen_long() {
    local p=$1 i kind copy_near=0
    local kinds=(RUN COPY ENV RUN LABEL WORKDIR RUN ARG COPY RUN)
    gen_files long "$p/ctx"
    {
        echo "FROM $registry/busybox:latest"
        for i in $(seq 2 59); do
            kind=${kinds[$(( (i - 2) % 10 ))]}
            case $kind in
                RUN) echo "RUN mkdir -p /steps && echo step $i > /steps/s$i && ls /steps | wc -l > /steps/count" ;;
                COPY) echo "COPY files/f$(printf %02d "$i").txt /opt/files/"
                      if (( i <= 30 )); then copy_near=$i; fi ;;
                ENV) echo "ENV STEP_$i=value$i" ;;
                LABEL) echo "LABEL bench.step$i=\"$i\"" ;;
                WORKDIR) echo "WORKDIR /w$i" ;;
                ARG) echo "ARG A$i=v$i" ;;
            esac
        done
        echo 'RUN echo "last 0" > /last.txt'
    } > "$p/Dockerfile"
    [[ $(grep -c . "$p/Dockerfile") == 60 ]] || die "long: expected 60 instructions"
    edit_file[long]=files/f$(printf %02d "$copy_near").txt
    touch_file[long]=files/f50.txt
    [[ -f $p/ctx/files/f50.txt ]] || die "long: files/f50.txt missing"
}

# Each edit writes content never written before (a global counter), so it always misses.
counter=0
do_edit() { # do_edit PROJECT
    local p=$work/proj/$1 f
    counter=$((counter + 1))
    f=$p/ctx/${edit_file[$1]}
    case $1 in
        context) sed -i "s/^#define VERSION .*/#define VERSION \"edit-$counter\"/" "$f" ;;
        debian) sed -i "s/\"version\": \"[^\"]*\"/\"version\": \"edit-$counter\"/" "$f" ;;
        parallel) printf 'edit %011d\n' "$counter" | dd of="$f" bs=17 count=1 conv=notrunc status=none ;;
        long) echo "edit $counter" >> "$f" ;;
    esac
}
do_last() { # do_last PROJECT: change the last instruction's text
    counter=$((counter + 1))
    sed -i "\$ s/.*/RUN echo \"last $counter\" > \\/last.txt/" "$work/proj/$1/Dockerfile"
}

# --- builders --------------------------------------------------------------------------
dockerd_pid() { cat /var/run/docker.pid 2>/dev/null || pgrep -xo dockerd || true; }

prepare_cold() { # prepare_cold BUILDER PROJECT: empty the builder's cache/store
    case $1 in
        rbuild) rm -rf "$work/rb-store" ;;
        buildah) wipe_buildah ;;
        buildkit)
            wipe_docker
            "$docker" builder prune -af >/dev/null 2>&1 || log "warning: docker builder prune -af failed"
            ;;
    esac
    sync
}

secs='' mem='' iid=''
# run_build BUILDER PROJECT LOG: one timed build; sets secs, mem (KB, or "KB (cli KB)"), iid
run_build() {
    local b=$1 proj=$2 logf=$3 p=$work/proj/$2 memf=$work/mem iidf=$work/iid rc=0 start end dpid=''
    local tag=$tag_prefix-$proj:latest
    local cmd
    rm -f "$iidf" "$memf"
    case $b in
        rbuild) cmd=("$RBUILD" build --root "$work/rb-store" --progress=quiet --iidfile "$iidf" -t "$tag") ;;
        buildah) cmd=(buildah --root "$work/bh-root" --runroot "$work/bh-runroot" --storage-driver "$driver"
                      build --layers --isolation chroot --tls-verify=false -q --iidfile "$iidf" -t "$tag"
                      "${buildah_extra[@]}") ;;
        buildkit) cmd=(env DOCKER_BUILDKIT=1 "$docker" build -q --iidfile "$iidf" -t "$tag")
                  dpid=$(dockerd_pid)
                  [[ -n $dpid ]] && { echo 5 > "/proc/$dpid/clear_refs"; } 2>/dev/null || dpid='' ;;
    esac
    cmd+=("${build_args[@]}" -f "$p/Dockerfile" "$p/ctx")
    # Untimed: flush what earlier builds left for the disk to write, so a
    # build is not charged for its predecessor's writeback (what it leaves
    # dirty itself is not counted, for any builder).
    sync
    start=$(now)
    "$timebin" -f %M -o "$memf" "${cmd[@]}" >"$logf" 2>&1 || rc=$?
    end=$(now)
    secs=$(echo "$end - $start" | bc -l)
    mem=$(tail -n 1 "$memf" 2>/dev/null || true)
    if [[ -n $dpid ]]; then
        local hwm
        hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$dpid/status" 2>/dev/null || true)
        if [[ -n $hwm ]]; then mem="$hwm $mem"; fi
    fi
    iid=$(cat "$iidf" 2>/dev/null || true)
    if [[ $b == buildkit && -n $iid ]]; then echo "$iid" >> "$work/docker-images"; fi
    return $rc
}

# --- measure ---------------------------------------------------------------------------
res=$work/res
mkdir -p "$res" "$work/proj" "$work/logs"
declare -A fail_note=()      # builder.project.scenario -> first error line
declare -A id_notes=()       # message -> "project run N, ..."
id_note() { # id_note MESSAGE WHERE: the image IDs say the cache did something unexpected
    log "warning: $1 ($2)"
    id_notes[$1]+="${id_notes[$1]:+, }$2"
}

for proj in $projects; do
    if [[ -n ${skip_project[$proj]:-} ]]; then
        log "$proj: skipped: ${skip_project[$proj]}"
        continue
    fi
    # The largest store (rbuild's: every 1 GiB COPY layer is kept as a blob and unpacked as a
    # snapshot for the RUN after it) after cold + edit, plus the context, plus a margin.
    case $proj in context) need_gb=12 ;; parallel) need_gb=2 ;; *) need_gb=1 ;; esac
    free_gb=$(df -Pk "$work" | awk 'NR == 2 {printf "%d", $4 / 1048576}')
    if (( free_gb < need_gb )); then
        skip_project[$proj]="needs ~$need_gb GiB free in $(dirname "$work"), has $free_gb GiB"
        log "$proj: skipped: ${skip_project[$proj]}"
        continue
    fi
    log "$proj: generating the project ..."
    t0=$(now)
    mkdir -p "$work/proj/$proj/ctx"
    "gen_$proj" "$work/proj/$proj"
    log "$proj: generated in $(printf '%.1f' "$(echo "$(now) - $t0" | bc -l)") s ($(find "$work/proj/$proj/ctx" -type f | wc -l) files, $(du -sh "$work/proj/$proj/ctx" | cut -f1))"
    for b in $builders; do
        [[ -n ${skip_builder[$b]:-} ]] && continue
        for r in $(seq 1 "$runs"); do
            prev=''
            for sc in "${scenarios[@]}"; do
                case $sc in
                    cold) prepare_cold "$b" "$proj" ;;
                    touch) touch "$work/proj/$proj/ctx/${touch_file[$proj]}" ;;
                    edit) do_edit "$proj" ;;
                    last) do_last "$proj" ;;
                esac
                logf=$work/logs/$b.$proj.$sc.$r.log
                if run_build "$b" "$proj" "$logf"; then
                    log "$proj: $b $sc run $r: $(printf '%.2f' "$secs") s, ${mem:-?} KB"
                    echo "$secs" >> "$res/$proj.$sc.$b.time"
                    echo "$mem" >> "$res/$proj.$sc.$b.mem"
                    # the cache must give the same image for no-change and touch, a new one after edits
                    case $sc in
                        no-change|touch) if [[ -n $iid && -n $prev && $iid != "$prev" ]]; then
                            id_note "$b, $sc: the image ID changed though the inputs did not (a cache miss, or new timestamps in the image config)" "$proj run $r"
                        fi ;;
                        edit|last) if [[ -n $iid && -n $prev && $iid == "$prev" ]]; then
                            id_note "$b, $sc: the image ID did not change after the edit (the edit was not built?)" "$proj run $r"
                        fi ;;
                    esac
                    prev=$iid
                else
                    log "$proj: $b $sc run $r FAILED; the end of its output:"
                    tail -n 15 "$logf" | sed 's/^/    /' >&2
                    echo x >> "$res/$proj.$sc.$b.fail"
                    [[ -z ${fail_note[$b.$proj.$sc]:-} ]] && \
                        fail_note[$b.$proj.$sc]="$(grep -iE 'error|fail' "$logf" | head -n 1 | cut -c1-300 || true)"
                    [[ $sc == cold ]] && break   # nothing to rebuild from
                    prev=''
                fi
            done
        done
        case $b in
            rbuild) rm -rf "$work/rb-store" ;;
            buildah) wipe_buildah ;;
            buildkit) wipe_docker; "$docker" builder prune -af >/dev/null 2>&1 || true ;;
        esac
    done
    rm -rf "${work:?}/proj/$proj"
done

# --- table -----------------------------------------------------------------------------
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) exit; if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'; }
fmt_time() { # seconds -> "85 ms" / "2.31 s"
    if (( $(echo "$1 < 1" | bc -l) )); then printf '%.0f ms' "$(echo "$1 * 1000" | bc -l)"; else printf '%.2f s' "$1"; fi
}
declare -A cell_t cell_s
time_cell() { # time_cell PROJECT SCENARIO BUILDER: sets cell_t (text) and cell_s (seconds or '')
    local k=$1.$2.$3 f=$res/$1.$2.$3
    cell_s[$k]=''
    if ! want "$3"; then cell_t[$k]='–'
    elif [[ -n ${skip_builder[$3]:-} ]]; then cell_t[$k]='skipped'
    elif [[ -n ${skip_project[$1]:-} ]]; then cell_t[$k]='skipped'
    elif [[ -s $f.fail && ! -s $f.time ]]; then cell_t[$k]='FAIL'
    elif [[ -s $res/$1.cold.$3.fail && ! -s $f.time ]]; then cell_t[$k]='– (cold FAIL)'
    elif [[ ! -s $f.time ]]; then cell_t[$k]='not run'
    else
        cell_s[$k]=$(median < "$f.time")
        cell_t[$k]=$(fmt_time "${cell_s[$k]}")
        if [[ -s $f.fail ]]; then cell_t[$k]+=" ($(wc -l < "$f.fail")/$runs FAIL)"; fi
    fi
}
mem_cell() { # mem_cell PROJECT SCENARIO BUILDER -> median MB (BuildKit: "dockerd (cli N)")
    local f=$res/$1.$2.$3.mem
    [[ -s $f ]] || { printf '%s' "${cell_t[$1.$2.$3]}"; return; }
    if [[ $3 == buildkit ]]; then
        local d c
        d=$(awk 'NF == 2 {print $1}' "$f" | median)
        c=$(awk '{print $NF}' "$f" | median)
        if [[ -n $d ]]; then printf '%.0f MB (cli %.0f)' "$(echo "$d / 1024" | bc -l)" "$(echo "$c / 1024" | bc -l)"
        else printf 'cli %.0f MB' "$(echo "$c / 1024" | bc -l)"; fi
    else
        printf '%.0f MB' "$(echo "$(median < "$f") / 1024" | bc -l)"
    fi
}
ratio() { [[ -n $1 && -n $2 ]] && printf '%.1f×' "$(echo "$1 / $2" | bc -l)" || printf '–'; }

mem_total=$(awk '/^MemTotal:/{printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
store_fs=$(df -T "$work" | awk 'NR == 2 {print $2 " (" $1 ", " $7 ")"}')
versions=()
want rbuild && versions+=("rbuild $(git -C "$repo" describe --always --dirty 2>/dev/null || echo '?')")
want buildah && [[ -z ${skip_builder[buildah]:-} ]] && versions+=("buildah $(buildah --version | awk '{print $3}') (--storage-driver $driver${BUILDAH_ARGS:+ $BUILDAH_ARGS})")
want buildkit && [[ -z ${skip_builder[buildkit]:-} ]] && versions+=("dockerd $("$docker" version --format '{{.Server.Version}}' 2>/dev/null) (BuildKit, $(df -T /var/lib/docker 2>/dev/null | awk 'NR == 2 {print $2}') /var/lib/docker)")

echo
echo "machine: $(nproc) cores ($(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)), $mem_total RAM, kernel $(uname -r), store filesystem $store_fs, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "builders: $(IFS=';'; echo "${versions[*]}" | sed 's/;/; /g')"
echo "median of $runs run(s) per scenario; each run: cold (empty store), then no-change, touch, edit, last in that store; whole benchmark took $(printf '%.0f' "$(echo "$(now) - $started" | bc -l)") s"
echo
for proj in $projects; do echo "- $proj: ${describe[$proj]}"; done
echo
echo "| project | scenario | rbuild | buildah | BuildKit | buildah/rbuild | BuildKit/rbuild | rbuild peak mem | buildah peak mem | BuildKit peak mem¹ |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for proj in $projects; do
    for sc in "${scenarios[@]}"; do
        for b in rbuild buildah buildkit; do time_cell "$proj" "$sc" "$b"; done
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$proj" "$sc" \
            "${cell_t[$proj.$sc.rbuild]}" "${cell_t[$proj.$sc.buildah]}" "${cell_t[$proj.$sc.buildkit]}" \
            "$(ratio "${cell_s[$proj.$sc.buildah]}" "${cell_s[$proj.$sc.rbuild]}")" \
            "$(ratio "${cell_s[$proj.$sc.buildkit]}" "${cell_s[$proj.$sc.rbuild]}")" \
            "$(mem_cell "$proj" "$sc" rbuild)" "$(mem_cell "$proj" "$sc" buildah)" "$(mem_cell "$proj" "$sc" buildkit)"
    done
done
echo
echo "¹ rbuild, buildah: max RSS of the builder and every process it waited for (RUN steps included)."
echo "  BuildKit: dockerd's peak RSS during the build (BuildKit runs inside dockerd; its RUN containers"
echo "  are separate runc processes, not counted; the peak includes what dockerd held before the build),"
echo "  and in parentheses the docker client's max RSS."
echo "Scenarios: cold = empty store, base pulled from $registry; no-change = same build again;"
echo "touch = one context file's mtime changed; edit = one COPY'd file's content changed (re-runs a"
echo "middle step and all after it); last = the Dockerfile's last instruction changed."
for k in "${!skip_builder[@]}"; do echo "- $k skipped: ${skip_builder[$k]}"; done
for k in "${!skip_project[@]}"; do echo "- project $k skipped: ${skip_project[$k]}"; done
for k in "${!fail_note[@]}"; do echo "- FAIL $k: ${fail_note[$k]:-(no error line; see the log)}"; done
for k in "${!id_notes[@]}"; do echo "- $k: ${id_notes[$k]}"; done
for n in "${notes[@]}"; do echo "- $n"; done
