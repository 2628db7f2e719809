#!/bin/sh
# Generate the secrets compose/docker-compose.yml reads, into ./secrets (or $1). Run once;
# run again to rotate (then `docker compose up -d --force-recreate`). Never commit them.
# Kubernetes (compose/k8s/kustomization.yaml reads compose/k8s/secrets):
#   ROUTE_HOSTS="nats-0.nats-headless nats-1.nats-headless nats-2.nats-headless" \
#     ./make-secrets.sh k8s/secrets
set -eu
dir=${1:-"$(dirname "$0")/secrets"}
mkdir -p "$dir"
chmod 700 "$dir"
rand() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
api=$(rand); worker=$(rand); cli=$(rand); provision=$(rand); route=$(rand); redis=$(rand)
admin=$(rand)
umask 022  # readable by the containers' users; the 0700 directory keeps others out
printf '%s\n' "$api" > "$dir/nats_api_password"
printf '%s\n' "$worker" > "$dir/nats_worker_password"
printf '%s\n' "$cli" > "$dir/nats_cli_password"
printf '%s\n' "$provision" > "$dir/nats_provision_password"
printf '%s\n' "$redis" > "$dir/redis_password"
printf 'requirepass "%s"\n' "$redis" > "$dir/valkey_auth"
# The admin API's bearer token (LLMQ_ADMIN_TOKEN_FILE / the Kubernetes Secret); kept when it
# exists, so that rotating the other secrets does not log every operator out.
[ -s "$dir/admin_token" ] || printf '%s\n' "$admin" > "$dir/admin_token"
# The backend key of the `openai` profile: yours to write; an empty file until then.
[ -e "$dir/openai_api_key" ] || : > "$dir/openai_api_key"
{
  printf 'LLMQ_API_PASSWORD: "%s"\n' "$api"
  printf 'LLMQ_WORKER_PASSWORD: "%s"\n' "$worker"
  printf 'LLMQ_CLI_PASSWORD: "%s"\n' "$cli"
  printf 'LLMQ_PROVISION_PASSWORD: "%s"\n' "$provision"
} > "$dir/nats-users.conf"
{
  printf 'LLMQ_ROUTE_PASSWORD: "%s"\n' "$route"
  printf 'LLMQ_ROUTES: [\n'
  for node in ${ROUTE_HOSTS:-nats-1 nats-2 nats-3}; do
    printf '  "nats-route://route:%s@%s:6222"\n' "$route" "$node"
  done
  printf ']\n'
} > "$dir/nats-routes.conf"
echo "secrets written to $dir"
