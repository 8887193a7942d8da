#!/usr/bin/env bash
# swap.sh COLOR STATE: routes the traffic to COLOR (here: writes STATE/live, which the
# instances read for their role label; a real setup would switch a load balancer).
# Ferry's rollback of a blue/green stage runs this with the colour that was live before.
set -euo pipefail
color=${1:?usage: swap.sh COLOR STATE}
STATE=${2:?state dir}
mkdir -p "$STATE"
before=$(cat "$STATE/live" 2>/dev/null || echo none)
echo "$color" >"$STATE/live"
echo "$(date -u +%FT%TZ) $before -> $color" >>"$STATE/swap.runs"
echo "traffic moved from $before to $color ($(cat "$STATE/$color.version" 2>/dev/null || echo '?'))"
