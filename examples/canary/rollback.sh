#!/usr/bin/env bash
# rollback.sh ROLLBACK_ARTIFACT STATE BASELINE_PORT
#
# Takes the canary out: its traffic goes back to the baseline, which runs ROLLBACK_ARTIFACT
# (the last version that deployed successfully here; Ferry passes it as
# $FERRY_ROLLBACK_ARTIFACT). Empty: nothing was ever deployed successfully; the canary is
# stopped and the baseline, if any, keeps serving.
set -euo pipefail
to=${1-}
STATE=${2:?usage: rollback.sh ROLLBACK_ARTIFACT STATE BASELINE_PORT}
baseline_port=${3:?baseline port}
source "$(dirname "$0")/lib.sh"
mkdir -p "$STATE"
echo 0 >"$STATE/weight"
stop_instance canary
if [ -z "$to" ]; then
  echo "no earlier successful deployment: nothing to roll back to"
  exit 0
fi
start_instance baseline "$to" "$baseline_port" baseline
echo "$to" >"$STATE/stable"
echo "rolled back: $to serves all traffic"
