# Shared by the example's scripts: start and stop one instance of service.mjs.
# Each instance NAME keeps its files in $STATE: NAME.pid, NAME.version, NAME.port, NAME.log.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

running() { # NAME: the instance's process is alive
  [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null
}

stop_instance() { # NAME
  local name=$1 pid
  if running "$name"; then
    pid=$(cat "$STATE/$name.pid")
    echo "stopping $name $(cat "$STATE/$name.version" 2>/dev/null) (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$name.pid" "$STATE/$name.version" "$STATE/$name.port"
}

start_instance() { # NAME VERSION PORT ROLE [COLOR]: (re)start NAME with VERSION unless it runs it already
  local name=$1 version=$2 port=$3 role=$4 color=${5:-}
  if running "$name" && [ "$(cat "$STATE/$name.version" 2>/dev/null)" = "$version" ]; then
    echo "$name already runs $version on port $(cat "$STATE/$name.port")"
    return 0
  fi
  stop_instance "$name"
  # the service must outlive this step: its own session, output to a file
  VERSION=$version PORT=$port ROLE=$role COLOR=$color NAME=$name STATE_DIR=$STATE \
    setsid node "$here/service.mjs" >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
  echo "$version" >"$STATE/$name.version"
  for _ in $(seq 1 100); do [ -s "$STATE/$name.port" ] && break; sleep 0.1; done
  if [ ! -s "$STATE/$name.port" ]; then
    echo "$name ($version) did not start:"; cat "$STATE/$name.log"
    stop_instance "$name"
    return 1
  fi
  echo "started $name $version on port $(cat "$STATE/$name.port") (pid $(cat "$STATE/$name.pid"))"
}
