#!/usr/bin/env bash
# Runs rbuild's whole test suite on a Debian 12 machine, installing what the
# tests need first. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages the tests use. Only missing ones are installed, so a
# second run costs nothing.
packages=(ca-certificates curl gcc libc6-dev skopeo umoci buildah zstd busybox-static debootstrap uidmap docker-registry apache2-utils openssl openssh-client tmux)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -f "$HOME/.cargo/env" ] || curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Snapshot tests must match what is committed, never rewrite it.
export INSTA_UPDATE=no CI=true

echo "--- cargo fmt --check" >&2
cargo fmt --all -- --check
echo "--- cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "--- cargo test" >&2
cargo test --workspace --locked
