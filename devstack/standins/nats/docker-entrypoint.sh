#!/bin/sh
# The official image's entrypoint: arguments that start with a flag are
# nats-server's; anything else (sh -c ..., as the compose files run) runs as given.
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- nats-server "$@"
fi
exec "$@"
