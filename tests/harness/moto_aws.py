"""moto's AWS server app (what ``moto_server`` serves) over real TLS (a trustme certificate for
the AWS host names), with its IAM signature checks switched on.

moto checks SigV4 the way AWS does once ``INITIAL_NO_AUTH_ACTION_COUNT`` is exhausted: it
looks up the access key id in the keys its IAM backend issued, recomputes the signature with
botocore over what it received, and answers ``SignatureDoesNotMatch`` / ``InvalidAccessKeyId``
otherwise, then evaluates the user's IAM policy. The set-up (IAM user, access key, policy,
bucket) runs with checks off; ``enforce_auth`` then turns them on for every later request
(POST /moto-api/reset-auth with 0). moto's state is per process: one server per test module.

Every request moto receives is recorded (method, target, headers) by a WSGI wrapper, so
tests assert on what actually arrived.
"""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

AWS_NAMES = (
    "s3.amazonaws.com",
    "s3.us-east-1.amazonaws.com",
    "*.s3.us-east-1.amazonaws.com",
    "s3.eu-west-1.amazonaws.com",
    "sts.amazonaws.com",
    "127.0.0.1",
)


@dataclass
class Arrived:
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class MotoAws:
    dir: Path
    arrived: list[Arrived] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        ca = trustme.CA()
        self.ca_file = self.dir / "moto-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(*AWS_NAMES).configure_cert(self._ctx)
        self._server: Any = None

    def _record(self, app: Any) -> Any:
        def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
            target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ["PATH_INFO"]
            headers = {k[5:].replace("_", "-").lower(): str(v)
                       for k, v in environ.items() if k.startswith("HTTP_")}
            self.arrived.append(Arrived(environ["REQUEST_METHOD"], target, headers))
            return app(environ, start_response)

        return wrapped

    def start(self) -> MotoAws:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        app = self._record(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=self._ctx)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self, service: str, key: str = "setup", secret: str = "setup") -> Any:
        """A boto3 client straight to moto (no proxy), for set-up and checks."""
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=key, aws_secret_access_key=secret,
                            verify=str(self.ca_file))

    def create_user(self, name: str) -> tuple[str, str]:
        """An IAM user allowed s3:* and its access key: (access_key_id, secret_access_key)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(
            UserName=name, PolicyName="s3-all",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}),
        )
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def enforce_auth(self) -> None:
        import requests

        r = requests.post(f"{self.url}/moto-api/reset-auth", data=b"0",
                          verify=str(self.ca_file), timeout=10)
        r.raise_for_status()
