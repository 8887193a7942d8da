#!/usr/bin/env bash
# deploy.sh ARTIFACT WEIGHT STATE BASELINE_PORT CANARY_PORT
#
# One canary phase. Below 100 %: the baseline instance keeps running the stable version and
# a canary instance runs ARTIFACT beside it, taking WEIGHT % of the traffic. At 100 %:
# ARTIFACT becomes the stable version (the baseline instance is replaced) and the canary
# instance goes away. The very first deployment has no stable version yet: the baseline
# then runs ARTIFACT too.
set -euo pipefail
artifact=${1:?usage: deploy.sh ARTIFACT WEIGHT STATE BASELINE_PORT CANARY_PORT}
weight=${2:?weight}
STATE=${3:?state dir}
baseline_port=${4:?baseline port}
canary_port=${5:?canary port}
source "$(dirname "$0")/lib.sh"
mkdir -p "$STATE"
echo "$(date -u +%FT%TZ) $artifact $weight" >>"$STATE/deploy.runs"

weight=${weight%.*}
if [ "$weight" -ge 100 ]; then
  echo "promoting $artifact to 100 %"
  echo 0 >"$STATE/weight"
  start_instance baseline "$artifact" "$baseline_port" baseline
  echo "$artifact" >"$STATE/stable"
  stop_instance canary
  exit 0
fi

stable=$(cat "$STATE/stable" 2>/dev/null || true)
if [ -z "$stable" ]; then
  echo "first deployment: no stable version yet, the baseline runs $artifact too"
  stable=$artifact
  echo "$stable" >"$STATE/stable"
fi
start_instance baseline "$stable" "$baseline_port" baseline
start_instance canary "$artifact" "$canary_port" canary
echo "$weight" >"$STATE/weight"
echo "canary $artifact takes $weight % of the traffic; baseline $stable the rest"
