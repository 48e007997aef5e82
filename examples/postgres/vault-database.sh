#!/bin/sh
# Vault's database secrets engine issuing the store's short-lived PostgreSQL users
# (examples/memorystore-postgres.yaml). Vault's own user needs CREATEROLE on the cluster.
set -eu
vault secrets enable database 2>/dev/null || true
vault write database/config/memory-db \
  plugin_name=postgresql-database-plugin \
  connection_url="postgresql://{{username}}:{{password}}@memory-db-rw.freehold-demo.svc:5432/memory?sslmode=verify-full" \
  username="vault" password="$VAULT_DB_PASSWORD" \
  allowed_roles="freehold-demo-citizen-memory"
# One user per lease, a member of the role that owns the store's tables.
vault write database/roles/freehold-demo-citizen-memory \
  db_name=memory-db \
  default_ttl=1h max_ttl=24h \
  creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE freehold_memory;" \
  revocation_statements="DROP ROLE IF EXISTS \"{{name}}\";"
