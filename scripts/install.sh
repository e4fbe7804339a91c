#!/usr/bin/env bash
# Installs rbuild from this checkout into /usr/local/bin, installing what a
# fresh Debian 12 machine lacks: a C toolchain and curl from apt, and Rust
# through rustup (Debian 12's rustc is too old for the workspace).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl ca-certificates)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
if [ "${#need_apt[@]}" -gt 0 ]; then
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -f "$HOME/.cargo/env" ] || curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

cargo build --release --locked
sudo_if_needed install -m 0755 target/release/rbuild /usr/local/bin/rbuild
echo "installed $(/usr/local/bin/rbuild --version) to /usr/local/bin/rbuild" >&2
