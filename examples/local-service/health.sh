#!/usr/bin/env bash
# health.sh STATE_DIR: the running version must answer GET /health with 200 within a few
# tries. Uses node (always there where a delegate runs) rather than curl.
set -uo pipefail
state=${1:?usage: health.sh STATE_DIR}
[ -s "$state/port" ] || { echo "no service is running in $state"; exit 1; }
port=$(cat "$state/port")
for i in 1 2 3 4 5; do
  body=$(node -e '
    fetch(process.argv[1]).then(async (r) => console.log(`${(await r.text()).trim()} HTTP ${r.status}`))
      .catch((e) => console.log(`no answer (${e.cause?.code ?? e.message})`));' "http://127.0.0.1:$port/health")
  echo "health check $i: $body"
  case "$body" in *"HTTP 200") exit 0 ;; esac
  sleep 0.3
done
echo "$(cat "$state/version") is unhealthy"
exit 1
