#!/bin/sh
# wait-healthy.sh PROJECT TIMEOUT SERVICE...: run each service's health check
# until it passes, for at most TIMEOUT seconds in all; exit 1 naming the one
# that did not. `make up` calls it between the back ends and the processes that
# need them: podman before 4.6 ignores `depends_on: condition: service_healthy`,
# and where no systemd runs the checks on a timer they would never run at all.
set -eu
project=$1
timeout=$2
shift 2
deadline=$(( $(date +%s) + timeout ))
for service in "$@"; do
    container=$(podman ps --quiet --filter "label=io.podman.compose.project=$project" \
        --filter "label=com.docker.compose.service=$service")
    if [ -z "$container" ]; then
        echo "wait-healthy: no running container for $service in $project" >&2
        podman ps --all --filter "label=io.podman.compose.project=$project" >&2
        for stopped in $(podman ps --all --quiet --filter "label=io.podman.compose.project=$project" \
                --filter "label=com.docker.compose.service=$service"); do
            echo "wait-healthy: $service's last lines:" >&2
            podman logs --tail 30 "$stopped" >&2
        done
        exit 1
    fi
    until podman healthcheck run "$container" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "wait-healthy: $service is not healthy after ${timeout} s; its last lines:" >&2
            podman logs --tail 30 "$container" >&2
            exit 1
        fi
        sleep 1
    done
    echo "$service is healthy"
done
