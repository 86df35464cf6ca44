#!/usr/bin/env bash
# Simulated publishing of one asset to a storage account: appends a line to the account's
# publish log (so a double publish is visible) and copies the file.
# Usage: publish.sh ASSET_FILE ACCOUNT_DIR NAME DIGEST
set -euo pipefail
asset=$1
account=$2
name=$3
digest=$4
mkdir -p "$account" "$(dirname "$account/$name")"
echo "$name $digest" >> "$account/publish.log"
cp "$asset" "$account/$name"
