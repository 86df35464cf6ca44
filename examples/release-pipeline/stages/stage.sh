#!/usr/bin/env bash
# One simulated stage: sleeps its scaled duration, then succeeds, or fails when
# FAIL_STAGE names it. Usage: stage.sh "STAGE NAME" SECONDS
set -euo pipefail
name=$1
seconds=${2:-0}
sleep "$seconds"
if [ "${FAIL_STAGE:-}" = "$name" ]; then
  echo "stage $name: failing on purpose (FAIL_STAGE)" >&2
  exit 1
fi
