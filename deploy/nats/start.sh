#!/bin/sh
# start.sh [nats-server option...]: nats-server with the passwords of the secret
# files, for podman-compose.yml and for each node of podman-compose.cluster.yml.
#
# nats-server reads passwords only from its configuration, where they are
# $VARIABLES (accounts.conf, cluster.conf): this script puts the secrets in its
# own environment alone, then becomes nats-server. nats-server parses a
# variable's value as configuration, so unquoted, a password such as "-x7..."
# or "1-2..." is no string and the server exits at start; each value is set in
# double quotes, which makes any of them a string. A secret may hold only
# A-Z a-z 0-9 _ - (what `make secrets` writes): nothing that could end the
# quotes or, for the route password, change a route's URL.
#
# NATS_ROUTE_PEERS (clustered stack only) lists every node's route address,
# host:port, this one's included; the routes to them carry the route password.
set -eu
secrets=${NATS_SECRETS_DIR:-/run/secrets}

secret() {
    value=$(cat "$secrets/$1")
    case $value in
        '' | *[!A-Za-z0-9_-]*)
            echo "start.sh: $secrets/$1 must be one line of the characters A-Z a-z 0-9 _ -" >&2
            exit 1
            ;;
    esac
    printf '%s' "$value"
}

# Assigned first, exported after: `export name=$(...)` would hide a failure.
server=$(secret nats_server_password)
bot=$(secret nats_bot_password)
export BALCAO_NATS_SERVER_PASSWORD="\"$server\"" BALCAO_NATS_BOT_PASSWORD="\"$bot\""
if [ -n "${NATS_ROUTE_PEERS:-}" ]; then
    route=$(secret nats_route_password)
    export BALCAO_NATS_ROUTE_PASSWORD="\"$route\""
    number=0
    for peer in $NATS_ROUTE_PEERS; do
        number=$((number + 1))
        export "BALCAO_NATS_ROUTE_$number=\"nats://route:$route@$peer\""
    done
fi
exec nats-server "$@"
