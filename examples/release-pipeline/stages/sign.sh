#!/usr/bin/env bash
# Simulated signing: every file of IN gets a signature with a fresh nonce, so signing the
# same inputs twice gives different bits (as real re-signing does). Usage: sign.sh IN OUT
set -euo pipefail
in=$1
out=$2
rm -rf "$out"
mkdir -p "$out"
nonce=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
(cd "$in" && find . -type f) | while read -r f; do
  mkdir -p "$out/$(dirname "$f")"
  { cat "$in/$f"; printf '\n-- signature %s --\n' "$nonce"; } > "$out/$f"
done
