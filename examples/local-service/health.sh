#!/usr/bin/env bash
# health.sh STATE_DIR: the running version must answer /health with 200 within a few seconds.
set -uo pipefail
state=${1:?usage: health.sh STATE_DIR}
port=$(cat "$state/port")
for i in 1 2 3 4 5; do
  body=$(curl -s -w ' HTTP %{http_code}' "http://127.0.0.1:$port/health")
  echo "health check $i: $body"
  case "$body" in *"HTTP 200") exit 0 ;; esac
  sleep 0.3
done
echo "$(cat "$state/version") is unhealthy"
exit 1
