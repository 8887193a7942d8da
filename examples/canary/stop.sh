#!/usr/bin/env bash
# stop.sh STATE: stops every instance the example started in STATE.
set -uo pipefail
STATE=${1:?usage: stop.sh STATE}
source "$(dirname "$0")/lib.sh"
for f in "$STATE"/*.pid; do
  [ -e "$f" ] || continue
  stop_instance "$(basename "$f" .pid)"
done
