#!/usr/bin/env bash
# deploy.sh ARTIFACT STATE_DIR: stop the running version of the demo service, start ARTIFACT,
# wait until it answers. The health check is a separate step (health.sh).
set -euo pipefail
artifact=${1:?usage: deploy.sh ARTIFACT STATE_DIR}
state=${2:?usage: deploy.sh ARTIFACT STATE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$state"
if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
  echo "stopping $(cat "$state/version" 2>/dev/null || echo '?') (pid $(cat "$state/pid"))"
  kill "$(cat "$state/pid")" || true
  for _ in $(seq 1 50); do kill -0 "$(cat "$state/pid")" 2>/dev/null || break; sleep 0.1; done
fi
rm -f "$state/port"
# The service must outlive this step: its own session (the delegate cancels a step by
# killing its process group), output to a file.
if command -v setsid >/dev/null; then detach=setsid; else detach=nohup; fi
$detach node "$here/service.mjs" "$artifact" 0 "$state" >"$state/service.log" 2>&1 < /dev/null &
echo $! >"$state/pid"
echo "$artifact" >"$state/version"
for _ in $(seq 1 100); do [ -s "$state/port" ] && break; sleep 0.1; done
[ -s "$state/port" ] || { echo "service did not start"; cat "$state/service.log"; exit 1; }
echo "started $artifact on port $(cat "$state/port") (pid $(cat "$state/pid"))"
echo "PORT=$(cat "$state/port")" >> "${FERRY_OUTPUT:-/dev/null}"
