"""What a workload that logs in to an existing PostgreSQL needs around it: egress to the
database, and the Vault path its credentials come from. Pure."""

from __future__ import annotations

import ipaddress
from typing import Any

from freehold.api.postgres import PostgresConnection

PG_CA_DIR = "/etc/freehold/postgres-ca"


def postgres_egress(pg: PostgresConnection) -> dict[str, Any]:
    """A host name cannot be a NetworkPolicy peer: an IP address is pinned, a name opens
    the database's port only."""
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": pg.port}]}
    if _is_ip(pg.host):
        bits = 128 if ":" in pg.host else 32
        rule["to"] = [{"ipBlock": {"cidr": f"{pg.host}/{bits}"}}]
    return rule


def postgres_ca_volume(
    pg: PostgresConnection,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) of the server's CA from caConfigMapRef, when the spec names one."""
    if pg.ca_config_map_ref is None:
        return [], []
    volume = {
        "name": "postgres-ca",
        "configMap": {
            "name": pg.ca_config_map_ref.name,
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        },
    }
    return [volume], [{"name": "postgres-ca", "mountPath": PG_CA_DIR, "readOnly": True}]


def postgres_vault_paths(pg: PostgresConnection) -> dict[str, str]:
    creds = pg.credentials
    if creds.database_role is not None:
        return {f"{creds.database_mount}/creds/{creds.database_role}": "read"}
    if creds.kv_path is not None:
        return {f"{creds.kv_mount}/data/{creds.kv_path}": "read"}
    return {}


def _is_ip(host: str) -> bool:

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
