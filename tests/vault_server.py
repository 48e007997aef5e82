"""A small server speaking Vault's documented HTTP API, for exactly the endpoints
Freehold calls: sys/health, ACL policies, Kubernetes auth (roles, login), KV v2,
transit (keys, config, delete, rotate, datakey, encrypt, decrypt, rewrap, sign, verify)
with real cryptography, and the database secrets engine for PostgreSQL (config, roles,
creds: each read makes a real PostgreSQL user with the role's creation statements).

It is the test double for Vault, which cannot be installed here. It enforces what
matters for the tests: tokens, and ACL policies (exact paths and `*` suffixes) with
read/create/update/delete capabilities; Kubernetes auth checks a role's bound
ServiceAccount and namespace. In-process, TokenReview (an API-server call) is stood in by
a map of JWT -> (ServiceAccount, namespace) that the test provides; run in a pod
(`python vault_server.py --in-cluster`, the real-pods suite), every login's JWT is sent to
the real API server's TokenReview with the audience `vault`, as Vault's Kubernetes auth
does, and only what the API server vouches for is trusted.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import ssl
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_PATH_BLOCK = re.compile(r'path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]\s*\}')


def parse_policy(hcl: str) -> dict[str, set[str]]:
    return {
        path: {c.strip().strip('"') for c in caps.split(",") if c.strip()}
        for path, caps in _PATH_BLOCK.findall(hcl)
    }


class VaultState:
    def __init__(self, root_token: str) -> None:
        self.root_token = root_token
        self.sealed = False
        self.policies: dict[str, str] = {}
        self.roles: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, list[str]] = {root_token: ["root"]}
        self.kv: dict[str, dict[str, Any]] = {}
        self.kv_versions: dict[str, int] = {}
        self.service_accounts: dict[str, tuple[str, str]] = {}  # jwt -> (sa, namespace)
        self.transit: dict[str, dict[str, Any]] = {}
        self.db_configs: dict[str, dict[str, Any]] = {}
        self.db_roles: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        # JWT -> (ServiceAccount, namespace) as the API server's TokenReview answers it;
        # None: the `service_accounts` map stands in for it.
        self.token_review: Callable[[str], tuple[str, str] | None] | None = None

    def identity(self, jwt: str) -> tuple[str, str] | None:
        if self.token_review is not None:
            return self.token_review(jwt)
        return self.service_accounts.get(jwt)

    def allowed(self, token: str | None, path: str, capability: str) -> bool:
        policies = self.tokens.get(token or "")
        if policies is None:
            return False
        if "root" in policies:
            return True
        for name in policies:
            for pattern, caps in parse_policy(self.policies.get(name, "")).items():
                hit = path.startswith(pattern[:-1]) if pattern.endswith("*") else path == pattern
                if hit and capability in caps:
                    return True
        return False


class _Handler(BaseHTTPRequestHandler):
    state: VaultState

    def log_message(self, *_: Any) -> None:  # quiet
        pass

    def _reply(self, code: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}

    def _route(self, method: str) -> None:
        state = self.state
        path = self.path.split("?")[0].removeprefix("/v1/")
        if path == "sys/health":
            code = 503 if state.sealed else 200
            return self._reply(
                code, {"initialized": True, "sealed": state.sealed, "standby": False}
            )
        if state.sealed:
            return self._reply(503, {"errors": ["Vault is sealed"]})
        body = self._body() if method in ("POST", "PUT") else {}
        token = self.headers.get("X-Vault-Token")
        if path == "auth/kubernetes/login" and method in ("POST", "PUT"):
            return self._login(body)
        capability = {"GET": "read", "DELETE": "delete", "LIST": "list"}.get(method, "update")
        if method in ("POST", "PUT") and not self._exists(path):
            capability = "create"
        with state.lock:
            if not state.allowed(token, path, capability) and not (
                capability == "create" and state.allowed(token, path, "update")
            ):
                return self._reply(403, {"errors": ["permission denied"]})
            return self._serve(method, path, body)

    def _exists(self, path: str) -> bool:
        state = self.state
        if path.startswith("sys/policies/acl/"):
            return path.rsplit("/", 1)[1] in state.policies
        if path.startswith("auth/kubernetes/role/"):
            return path.rsplit("/", 1)[1] in state.roles
        return path in state.kv

    def _serve(self, method: str, path: str, body: dict[str, Any]) -> None:
        state = self.state
        for prefix, store, wrap in (
            ("sys/policies/acl/", state.policies, "policy"),
            ("auth/kubernetes/role/", state.roles, None),
        ):
            if path.startswith(prefix):
                name = path.removeprefix(prefix)
                if method == "GET":
                    if name not in store:
                        return self._reply(404, {"errors": []})
                    value = store[name]
                    data = {"name": name, "policy": value} if wrap else dict(value)
                    return self._reply(200, {"data": data})
                if method == "DELETE":
                    store.pop(name, None)
                    return self._reply(204)
                store[name] = body[wrap] if wrap else dict(body)
                return self._reply(204)
        if path.startswith("transit/"):
            return self._transit(method, path.removeprefix("transit/"), body)
        if path.startswith("database/"):
            return self._database(method, path.removeprefix("database/"), body)
        if "/data/" in path:  # KV v2, with versions and check-and-set
            if method == "GET":
                if path not in state.kv:
                    return self._reply(404, {"errors": []})
                version = state.kv_versions.get(path, 1)
                return self._reply(
                    200, {"data": {"data": state.kv[path], "metadata": {"version": version}}}
                )
            if method in ("POST", "PUT"):
                # (requests are handled under state.lock: the check and the write are one)
                current = state.kv_versions.get(path, 1) if path in state.kv else 0
                cas = (body.get("options") or {}).get("cas")
                if cas is not None and int(cas) != current:
                    return self._reply(
                        400,
                        {"errors": ["check-and-set parameter did not match the current version"]},
                    )
                state.kv[path] = dict(body.get("data") or {})
                state.kv_versions[path] = current + 1
                return self._reply(200, {"data": {"version": current + 1}})
            if method == "DELETE":
                state.kv.pop(path, None)
                return self._reply(204)
        return self._reply(404, {"errors": [f"no handler for route {path!r}"]})

    def _database(self, method: str, path: str, body: dict[str, Any]) -> None:
        """Vault's database secrets engine, PostgreSQL plugin: what a store's replicas ask
        for their short-lived users."""
        state = self.state
        kind, _, name = path.partition("/")
        if kind in ("config", "roles") and method in ("POST", "PUT"):
            (state.db_configs if kind == "config" else state.db_roles)[name] = dict(body)
            return self._reply(204)
        if kind == "creds" and method == "GET":
            role = state.db_roles.get(name)
            config = state.db_configs.get(str((role or {}).get("db_name")))
            if role is None or config is None:
                return self._reply(400, {"errors": [f"unknown role: {name}"]})
            import datetime

            import psycopg

            user = f"v-{name[:20]}-{secrets.token_hex(6)}"
            password = "A1a-" + secrets.token_urlsafe(18)
            ttl = int(role.get("default_ttl") or 3600)
            expiration = (
                datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=ttl)
            ).strftime("%Y-%m-%d %H:%M:%S+00")
            url = (
                str(config["connection_url"])
                .replace("{{username}}", str(config["username"]))
                .replace("{{password}}", str(config["password"]))
            )
            statements = role.get("creation_statements") or []
            if isinstance(statements, str):
                statements = [statements]
            with psycopg.connect(url, autocommit=True) as conn:
                for statement in statements:
                    for part in str(statement).split(";"):
                        if part.strip():
                            sql = (
                                part.replace("{{name}}", user)
                                .replace("{{password}}", password)
                                .replace("{{expiration}}", expiration)
                            )
                            conn.execute(sql.encode())
            return self._reply(
                200,
                {
                    "lease_id": f"database/creds/{name}/{secrets.token_hex(8)}",
                    "lease_duration": ttl,
                    "renewable": True,
                    "data": {"username": user, "password": password},
                },
            )
        return self._reply(404, {"errors": [f"no handler for route database/{path}"]})

    def _transit(self, method: str, path: str, body: dict[str, Any]) -> None:
        """Transit with real cryptography (AES-GCM, Ed25519), versioned keys."""
        import base64
        import os as _os

        from cryptography.hazmat.primitives.asymmetric.ed25519 import (
            Ed25519PrivateKey,
            Ed25519PublicKey,
        )
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        keys = self.state.transit
        parts = path.split("/")

        def seal(name: str, plaintext: bytes) -> str:
            version = len(keys[name]["versions"])
            nonce = _os.urandom(12)
            blob = nonce + AESGCM(keys[name]["versions"][-1]).encrypt(nonce, plaintext, None)
            return f"vault:v{version}:" + base64.b64encode(blob).decode()

        def open_(name: str, ciphertext: str) -> bytes:
            _, version, blob = ciphertext.split(":", 2)
            raw = base64.b64decode(blob)
            key = keys[name]["versions"][int(version[1:]) - 1]
            return AESGCM(key).decrypt(raw[:12], raw[12:], None)

        if parts[0] == "keys" and len(parts) == 2 and method == "GET":
            entry = keys.get(parts[1])
            if entry is None:
                return self._reply(404, {"errors": []})
            from cryptography.hazmat.primitives import serialization

            listed: dict[str, Any] = {}
            for n, secret in enumerate(entry["versions"], 1):
                if entry["type"] == "ed25519":
                    raw = secret.public_key().public_bytes(
                        serialization.Encoding.Raw, serialization.PublicFormat.Raw
                    )
                    listed[str(n)] = {"public_key": base64.b64encode(raw).decode()}
                else:
                    listed[str(n)] = n
            data = {"type": entry["type"], "keys": listed, "latest_version": len(listed)}
            return self._reply(200, {"data": data})
        if parts[0] == "keys" and len(parts) == 2 and method == "DELETE":
            entry = keys.get(parts[1])
            if entry is not None and not entry.get("deletion_allowed"):
                return self._reply(400, {"errors": ["deletion is not allowed for this key"]})
            keys.pop(parts[1], None)
            return self._reply(204)
        if parts[0] == "keys" and parts[2:] == ["config"]:
            if parts[1] not in keys:
                return self._reply(400, {"errors": ["encryption key not found"]})
            keys[parts[1]]["deletion_allowed"] = bool(body.get("deletion_allowed"))
            return self._reply(204)
        if parts[0] == "keys" and len(parts) == 2:
            kind = body.get("type", "aes256-gcm96")
            secret = (
                Ed25519PrivateKey.generate()
                if kind == "ed25519"
                else AESGCM.generate_key(bit_length=256)
            )
            keys.setdefault(parts[1], {"type": kind, "versions": [secret]})
            return self._reply(204)
        if parts[0] == "keys" and parts[2:] == ["rotate"]:
            entry = keys[parts[1]]
            entry["versions"].append(
                Ed25519PrivateKey.generate()
                if entry["type"] == "ed25519"
                else AESGCM.generate_key(bit_length=256)
            )
            return self._reply(204)
        name = parts[-1]
        if name not in keys:
            return self._reply(400, {"errors": ["encryption key not found"]})
        if parts[0] == "datakey":
            plain = _os.urandom(int(body.get("bits", 256)) // 8)
            data = {"ciphertext": seal(name, plain)}
            if parts[1] == "plaintext":
                data["plaintext"] = base64.b64encode(plain).decode()
            return self._reply(200, {"data": data})
        if parts[0] == "encrypt":
            data = {"ciphertext": seal(name, base64.b64decode(body["plaintext"]))}
            return self._reply(200, {"data": data})
        if parts[0] == "decrypt":
            plain = open_(name, body["ciphertext"])
            return self._reply(200, {"data": {"plaintext": base64.b64encode(plain).decode()}})
        if parts[0] == "rewrap":
            return self._reply(
                200, {"data": {"ciphertext": seal(name, open_(name, body["ciphertext"]))}}
            )
        if parts[0] in ("sign", "verify"):
            message = base64.b64decode(body["input"])
            versions = keys[name]["versions"]
            if parts[0] == "sign":
                signature = versions[-1].sign(message)
                return self._reply(
                    200,
                    {
                        "data": {
                            "signature": f"vault:v{len(versions)}:"
                            + base64.b64encode(signature).decode()
                        }
                    },
                )
            _, version, sig = body["signature"].split(":", 2)
            public: Ed25519PublicKey = versions[int(version[1:]) - 1].public_key()
            try:
                public.verify(base64.b64decode(sig), message)
                valid = True
            except Exception:
                valid = False
            return self._reply(200, {"data": {"valid": valid}})
        return self._reply(404, {"errors": [f"no handler for route transit/{path}"]})

    def _login(self, body: dict[str, Any]) -> None:
        state = self.state
        role = state.roles.get(str(body.get("role")))
        identity = state.identity(str(body.get("jwt")))
        if role is None or identity is None:
            return self._reply(403, {"errors": ["permission denied"]})
        sa, namespace = identity
        if sa not in role.get("bound_service_account_names", []) or namespace not in role.get(
            "bound_service_account_namespaces", []
        ):
            return self._reply(403, {"errors": ["service account name not authorized"]})
        token = "hvs." + secrets.token_urlsafe(16)
        with state.lock:
            state.tokens[token] = list(role.get("token_policies", []))
        return self._reply(
            200,
            {
                "auth": {
                    "client_token": token,
                    "policies": role.get("token_policies", []),
                    "lease_duration": 600,
                    "renewable": True,
                }
            },
        )

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")


class VaultServer:
    """`with VaultServer() as vault:` ... `vault.url`, `vault.state`, `vault.stop()`."""

    def __init__(self, root_token: str = "root-test-token") -> None:
        self.state = VaultState(root_token)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> VaultServer:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def transit_public_keys(url: str, token: str, name: str) -> list[str]:
    """Every version's public key of an ed25519 transit key (base64), read over Vault's HTTP
    API as an auditor reads them (`vault read transit/keys/NAME`): the trust anchor that
    `freehold audit verify --trusted-key` wants for the operator's log."""
    import httpx

    answer = httpx.get(
        f"{url.rstrip('/')}/v1/transit/keys/{name}", headers={"X-Vault-Token": token}, timeout=10
    )
    answer.raise_for_status()
    keys = answer.json()["data"]["keys"]
    return [str(keys[n]["public_key"]) for n in sorted(keys, key=int)]


def kubernetes_token_review(audience: str = "vault") -> Callable[[str], tuple[str, str] | None]:
    """TokenReview on the API server this pod runs under, with the pod's own token (its
    ServiceAccount needs system:auth-delegator, as Vault's does)."""
    context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
    url = "https://kubernetes.default.svc/apis/authentication.k8s.io/v1/tokenreviews"

    def review(jwt: str) -> tuple[str, str] | None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": jwt, "audiences": [audience]},
        }
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {(SA_DIR / 'token').read_text().strip()}",
                "Content-Type": "application/json",
            },
            method="POST",
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            status = json.loads(response.read()).get("status") or {}
        if not status.get("authenticated") or audience not in (status.get("audiences") or []):
            return None
        parts = str((status.get("user") or {}).get("username", "")).split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            return None
        return parts[3], parts[2]

    return review


def main() -> None:
    parser = argparse.ArgumentParser(description="Vault's HTTP API, for tests")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--root-token", required=True)
    parser.add_argument("--in-cluster", action="store_true", help="logins via TokenReview")
    args = parser.parse_args()
    state = VaultState(args.root_token)
    if args.in_cluster:
        state.token_review = kubernetes_token_review()
    handler = type("Handler", (_Handler,), {"state": state})
    ThreadingHTTPServer((args.host, args.port), handler).serve_forever()


if __name__ == "__main__":
    main()
