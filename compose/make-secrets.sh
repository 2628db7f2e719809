#!/bin/sh
# Generate the secrets compose/docker-compose.yml reads, into ./secrets (or $1). Run once;
# run again to rotate (then `docker compose up -d --force-recreate`). Never commit them.
set -eu
dir=${1:-"$(dirname "$0")/secrets"}
mkdir -p "$dir"
chmod 700 "$dir"
rand() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
api=$(rand); worker=$(rand); route=$(rand); redis=$(rand)
umask 022  # readable by the containers' users; the 0700 directory keeps others out
printf '%s\n' "$api" > "$dir/nats_api_password"
printf '%s\n' "$worker" > "$dir/nats_worker_password"
printf '%s\n' "$redis" > "$dir/redis_password"
printf 'requirepass "%s"\n' "$redis" > "$dir/valkey_auth"
{
  printf 'LLMQ_API_PASSWORD: "%s"\n' "$api"
  printf 'LLMQ_WORKER_PASSWORD: "%s"\n' "$worker"
} > "$dir/nats-users.conf"
{
  printf 'LLMQ_ROUTE_PASSWORD: "%s"\n' "$route"
  printf 'LLMQ_ROUTES: [\n'
  for node in nats-1 nats-2 nats-3; do
    printf '  "nats-route://route:%s@%s:6222"\n' "$route" "$node"
  done
  printf ']\n'
} > "$dir/nats-routes.conf"
echo "secrets written to $dir"
