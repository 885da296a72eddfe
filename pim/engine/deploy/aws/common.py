"""What every AWS module shares: clients, tags and names, botocore errors as DeployError,
which errors are worth another try, EC2 waiters, and cleanup that keeps the first error.

Retries come in two layers. Every client runs botocore's standard retry mode
(MAX_ATTEMPTS tries per call): throttling, 5xx answers, RequestTimeout and dropped
connections (botocore's ConnectionError and HTTPClientError), with waits of at most
about 1.6 s in all for anything but throttling and a retry quota per client
(botocore/retries/standard.py and quota.py). That bridges a blip, not an outage of
a few seconds, so the calls that an outage must not fail are retried again, whole,
under a named policy of pim.engine.retry with `transient` below deciding:
PutSnapshotBlock (EBS_BLOCK: idempotent per block index, SHA-256 checked), and the
calls that meet EC2's eventual consistency (EC2_VISIBLE: the import task poll,
CreateTags on an imported snapshot, the AMI of a duplicate name). The EC2 waiters
(`wait_for`) wait out a NotFound of a resource just made. Everything else is
permanent and raised at once, as a DeployError naming the call.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
from typing import Any, Callable, Iterator

from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.spec import AwsTarget
from pim.engine.events import Emitter

TAG_KEY, TAG_IMAGE, TAG_SNAPSHOT = "pim:key", "pim:image", "pim:snapshot"
GIB = 1 << 30
GONE = {"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidSnapshot.NotFound", "InvalidSnapshotID.NotFound"}
MAX_ATTEMPTS = 6  # per call, the first included (botocore's total_max_attempts)
WAIT_DELAY = 5.0  # seconds between the polls of an EC2 waiter
# The error an EC2 waiter meets when the resource it waits for is not visible yet
# ("Eventual consistency in the Amazon EC2 API", Amazon EC2 Developer Guide):
# https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html
NOT_YET = {"ImageAvailable": ("InvalidAMIID.NotFound",), "SnapshotCompleted": ("InvalidSnapshot.NotFound",)}


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


def http_status(err: BaseException) -> int:
    """The HTTP status of a botocore ClientError (0 when there is none)."""
    return int(getattr(err, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def not_found(err: BaseException) -> bool:
    """An EC2 `<Resource>.NotFound` error code: gone, or (just after a create) not visible yet."""
    return error_code(err).endswith(".NotFound")


def transient(err: BaseException) -> bool:
    """Whether an error botocore raised is worth trying the call again later.

    botocore's own classification (botocore/retries/standard.py, the checkers of
    its standard retry mode): a ConnectionError or HTTPClientError (refused, reset,
    connect or read timeout, a broken response stream), the transient codes
    (RequestTimeout, RequestTimeoutException, PriorRequestNotComplete) and the
    throttling codes (Throttling*, RequestLimitExceeded, SlowDown,
    RequestThrottledException, ...); and any HTTP status >= 500 or 429. Everything
    else (AccessDenied, UnauthorizedOperation, ValidationException, *.NotFound, ...)
    is permanent: False.
    """
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(err, (ConnectionError, HTTPClientError)):
        return True
    if not isinstance(err, ClientError):
        return False
    status = http_status(err)
    if status >= 500 or status == 429:
        return True
    from botocore.retries.standard import RetryContext

    context = RetryContext(attempt_number=1, parsed_response=err.response)
    return any(checker.is_retryable(context) for checker in _botocore_checkers())


@functools.cache
def _botocore_checkers() -> tuple[Any, ...]:
    from botocore.retries.standard import ThrottledRetryableChecker, TransientRetryableChecker

    return TransientRetryableChecker(), ThrottledRetryableChecker()


@contextlib.contextmanager
def failing_as(what: str) -> Iterator[None]:
    """A botocore error (raised after every retry) as a DeployError naming the call.

    The message ends with the retry helper's note ("gave up after 5 tries ...")
    when there is one.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as e:
        notes = "".join(f" ({n})" for n in getattr(e, "__notes__", []))
        raise DeployError(f"{what} failed: {e}{notes}") from e


def cleaning_up(error: BaseException, what: str, cleanup: Callable[[], Any], events: Emitter | None) -> None:
    """Run `cleanup` while `error` is on its way out, without ever raising in its place.

    Call it in an except block, then re-raise: when the cleanup fails too (the same
    outage, say), that failure is logged as a warning through `events` and added
    to `error` as a note, and the first error stays the one raised. Ctrl-C
    (a BaseException) in the cleanup is not swallowed.
    """
    try:
        cleanup()
    except Exception as e:
        text = f"{what} failed too, while handling the error above: {e}"
        error.add_note(text)
        if events is not None:
            events.warning("deploy", text)


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


def waiter(ec2: Any, name: str) -> Any:
    """botocore's EC2 waiter `name` (ImageAvailable, SnapshotCompleted) that also waits out
    the NotFound of a resource just made (NOT_YET).

    The acceptors are botocore's own, copied from its waiters-2 model, plus
    {"state": "retry", "matcher": "error", "expected": code} for each code in
    NOT_YET[name]: without it a waiter ends at once on any error no acceptor names.
    """
    from botocore.waiter import WaiterModel, create_waiter_with_client

    config = dict(_builtin_waiters(ec2.meta.service_model.api_version)[name])
    config["acceptors"] = list(config["acceptors"]) + [
        {"state": "retry", "matcher": "error", "expected": code} for code in NOT_YET.get(name, ())]
    return create_waiter_with_client(name, WaiterModel({"version": 2, "waiters": {name: config}}), ec2)


@functools.cache
def _builtin_waiters(api_version: str) -> dict[str, Any]:
    import botocore.session

    loader = botocore.session.get_session().get_component("data_loader")
    return loader.load_service_model("ec2", "waiters-2", api_version)["waiters"]


def wait_for(ec2: Any, name: str, what: str, timeout: float, delay: float | None = None, **params: Any) -> None:
    """Wait with `waiter(ec2, name)` until the resource is ready.

    Polls every `delay` seconds (WAIT_DELAY by default) for up to `timeout`
    seconds; each poll is one botocore call (with botocore's retries), and a NotFound
    counts as "not yet". Raises DeployError naming the resource and the state AWS
    reported when it reaches a failure state (a snapshot in `error`, an AMI
    `failed`), when the time runs out, when AWS answers an error no acceptor names,
    or when the poll itself fails (a BotoCoreError such as a connection refused
    after botocore's retries).
    """
    from botocore.exceptions import BotoCoreError, WaiterError

    delay = WAIT_DELAY if delay is None else delay
    w = waiter(ec2, name)
    try:
        w.wait(WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(timeout // delay) + 1)}, **params)
    except WaiterError as e:
        last = e.last_response or {}
        items = last.get("Snapshots") or last.get("Images") or []
        state = ", ".join(f"{i.get('State')} {i.get('StateMessage') or i.get('StateReason', {}).get('Message', '')}"
                          .strip() for i in items)
        if not state and "Error" in last:
            state = f"{w.config.operation} answered {last['Error'].get('Code')}: {last['Error'].get('Message', '')}"
        if "Max attempts exceeded" in str(e):
            raise DeployError(f"{what} not ready after {timeout:.0f} s (state: {state or 'unknown'})") from None
        raise DeployError(f"{what} failed: {state or e}") from None
    except BotoCoreError as e:
        raise DeployError(f"{what}: {w.config.operation} failed: {e}") from e
