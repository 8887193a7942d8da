#!/usr/bin/env bash
# deploy-bg.sh ARTIFACT COLOR STATE BLUE_PORT GREEN_PORT
#
# Blue/green: starts ARTIFACT on the idle colour COLOR (Ferry passes $FERRY_COLOR). Traffic
# does not move: swap.sh does that. Until the swap, this colour's series carry
# role="canary" and the live colour's role="baseline", so a verification compares them.
# Each run is counted in STATE/deploy.runs (a rollback must not redeploy).
set -euo pipefail
artifact=${1:?usage: deploy-bg.sh ARTIFACT COLOR STATE BLUE_PORT GREEN_PORT}
color=${2:?color}
STATE=${3:?state dir}
blue_port=${4:?blue port}
green_port=${5:?green port}
source "$(dirname "$0")/lib.sh"
mkdir -p "$STATE"
echo "$(date -u +%FT%TZ) $artifact $color" >>"$STATE/deploy.runs"
case "$color" in
  blue) port=$blue_port ;;
  green) port=$green_port ;;
  *) echo "unknown colour '$color'"; exit 2 ;;
esac
start_instance "$color" "$artifact" "$port" auto "$color"
echo "$artifact is ready on $color; live is $(cat "$STATE/live" 2>/dev/null || echo 'nothing yet')"
