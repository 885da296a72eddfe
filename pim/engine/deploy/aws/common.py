"""What every AWS module shares: clients, tags and names, and botocore errors as DeployError.

Retries are botocore's: every client runs in its standard retry mode, which
retries throttling, 5xx answers, RequestTimeout and dropped connections
(botocore's ConnectionError and HTTPClientError) with exponential backoff and
jitter under the SDK's retry quota. That includes PutSnapshotBlock and S3
UploadPart: their bodies are bytes botocore sends again, and their SHA-256
checksums make a resent block safe. So no call here is wrapped in a retry loop
of our own.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from typing import Any, Iterator

from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.spec import AwsTarget

TAG_KEY, TAG_IMAGE, TAG_SNAPSHOT = "pim:key", "pim:image", "pim:snapshot"
GIB = 1 << 30
GONE = {"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidSnapshot.NotFound", "InvalidSnapshotID.NotFound"}
MAX_ATTEMPTS = 6  # per call, the first included (botocore's total_max_attempts)


# ---------------------------------------------------------------- pure parts

def ami_name(image: BuiltImage) -> str:
    """Unique per build: AWS refuses a second AMI of that name in a region."""
    return f"pim-{image.name}-{image.key[:16]}"


def tags_for(image: BuiltImage, target: AwsTarget) -> dict[str, str]:
    tags = {"Name": ami_name(image), TAG_KEY: image.key, TAG_IMAGE: image.name}
    if image.sha256:
        tags["pim:sha256"] = image.sha256
    tags.update({f"pim:lineage:{stage}": value[:256] for stage, value in image.lineage_tags.items()})
    tags.update({f"pim:{name}": digest for name, digest in image.attestation_digests.items()})
    tags.update(target.tags)
    return tags


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def volume_gib(virtual_size: int) -> int:
    return max(1, -(-virtual_size // GIB))


def checksum(data: bytes) -> str:
    """Base64 SHA-256, as PutSnapshotBlock and S3 checksums take it."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def error_code(err: BaseException) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def failing_as(what: str) -> Iterator[None]:
    """A botocore error (raised after botocore's own retries) as a DeployError naming the call."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as e:
        raise DeployError(f"{what} failed: {e}") from e


# ---------------------------------------------------------------- clients

class Clients:
    """boto3 clients per (service, region) from the standard credential chain."""

    def __init__(self, target: AwsTarget):
        import boto3
        from botocore.config import Config

        self.target = target
        self.session = boto3.Session(profile_name=target.profile)
        retries: Any = {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}
        self._configs = {
            "ebs": Config(retries=retries, max_pool_connections=target.parallel * 2 + 2,
                          connect_timeout=10, read_timeout=60),
            "default": Config(retries=retries, connect_timeout=10, read_timeout=60),
        }
        self._cache: dict[tuple[str, str], Any] = {}

    def get(self, service: str, region: str) -> Any:
        if (service, region) not in self._cache:
            cfg = self._configs.get(service, self._configs["default"])
            self._cache[service, region] = self.session.client(
                service, region_name=region, endpoint_url=self.target.endpoint_url, config=cfg)
        return self._cache[service, region]


def delete_snapshot(ec2: Any, sid: str) -> bool:
    """Delete one snapshot; False when it is already gone."""
    from botocore.exceptions import ClientError

    try:
        ec2.delete_snapshot(SnapshotId=sid)
        return True
    except ClientError as e:
        if error_code(e) in GONE:
            return False
        raise


def wait_for(ec2: Any, waiter: str, what: str, timeout: float, delay: float = 5.0, **params: Any) -> None:
    """Run one of botocore's EC2 waiters (snapshot_completed, image_available, ...).

    Polls every `delay` seconds for up to `timeout` seconds; raises DeployError with
    the state AWS reported when the waiter fails or runs out of attempts.
    """
    from botocore.exceptions import WaiterError

    try:
        ec2.get_waiter(waiter).wait(WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(timeout // delay) + 1)},
                                    **params)
    except WaiterError as e:
        last = e.last_response or {}
        items = last.get("Snapshots") or last.get("Images") or []
        state = ", ".join(f"{i.get('State')} {i.get('StateMessage') or i.get('StateReason', {}).get('Message', '')}"
                          .strip() for i in items)
        if "Max attempts exceeded" in str(e):
            raise DeployError(f"{what} not ready after {timeout:.0f} s (state: {state or 'unknown'})") from None
        raise DeployError(f"{what} failed: {state or e}") from None
