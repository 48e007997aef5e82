"""An S3-compatible server for the s3:// model tests: moto's server (in .tools/moto, which
scripts/test installs; no real S3-compatible store installs here), with authentication
enforced: only an access key made through its IAM API may read, as on a real store."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.paths import ROOT
from tests.ports import free_port

MOTO = ROOT / ".tools" / "moto" / "bin"
SETUP = """
import boto3, json, sys
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="models")
iam.put_user_policy(UserName="models", PolicyName="read", PolicyDocument=json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="models")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
"""


@dataclass(frozen=True)
class Store:
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str


@contextmanager
def s3_server(folder: Path) -> Iterator[Store]:
    if not (MOTO / "moto_server").exists():
        raise AssertionError("moto's server is missing: scripts/test installs it in .tools/moto")
    port = free_port()
    # The first three calls (making the user, its policy and its key) go unauthenticated;
    # every later one needs a valid key.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen(
        [str(MOTO / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "moto.log").open("wb"),
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        # Ready when it accepts connections (an HTTP request would spend an
        # unauthenticated action).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        made = subprocess.run(
            [str(MOTO / "python"), "-c", SETUP, endpoint],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        access, secret = made.stdout.split()
        yield Store(endpoint, access, secret)
    finally:
        proc.terminate()
        proc.wait(10)
