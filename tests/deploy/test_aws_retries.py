"""Every AWS call of `pim deploy` is either tried again (transient, within a bound) or
fails at once (permanent), and a failed cleanup never hides the first error.

Faults are real HTTP answers: `Faults` answers chosen requests of the engine's own
clients (botocore's before-send event, once per HTTP attempt) with a status and an
error body in the service's own protocol, so botocore parses and retries them as it
would AWS's. Everything else goes to the session's moto server, under the EC2 rules
of ec2_rules.py. The waiters are checked with botocore's Stubber.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter, defaultdict
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

import pytest

from pim.engine.deploy.aws import amis, common, direct, s3import
from pim.engine.deploy.aws import backend as aws_mod
from pim.engine.deploy.aws.common import Clients, ami_name
from pim.engine.deploy.model import DeployError
from pim.engine.retry import EBS_BLOCK, EC2_VISIBLE, Policy
from tests.deploy.conftest import Disk, Recorder, aws_target, boto
from tests.deploy.test_aws import FakeImportEc2, _StubClients, images_of, nonzero_blocks, snapshot_blocks

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
Answer = Any  # None: pass through; (status, code): an error answer; callable(request): a response or None


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def response(url: str, status: int, body: str, headers: dict[str, str]) -> Any:
    from botocore.awsrequest import AWSResponse

    return AWSResponse(url, status, headers, _Raw(body.encode()))


def error_answer(service: str, url: str, status: int, code: str, message: str = "injected by the test") -> Any:
    """An error as the service's protocol carries it: EC2 query XML, S3 REST XML, EBS REST JSON."""
    if service == "ec2":
        return response(url, status, f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}'
                                     f'</Code><Message>{message}</Message></Error></Errors><RequestID>pim-test'
                                     f'</RequestID></Response>', {"Content-Type": "text/xml"})
    if service == "s3":
        return response(url, status, f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>'
                                     f'{message}</Message><RequestId>pim-test</RequestId></Error>',
                        {"Content-Type": "application/xml"})
    return response(url, status, json.dumps({"message": message, "Reason": "injected"}),
                    {"Content-Type": "application/json", "x-amzn-ErrorType": code})


def ec2_answer(url: str, operation: str, inner: str) -> Any:
    return response(url, 200, f'<?xml version="1.0" encoding="UTF-8"?><{operation}Response xmlns="{EC2_NS}">'
                              f'<requestId>pim-test</requestId>{inner}</{operation}Response>',
                    {"Content-Type": "text/xml"})


class Faults:
    """Planned answers per operation, in order, for every client the engine makes; counts every send."""

    def __init__(self, url: str) -> None:
        self.url = url  # the moto server
        self.plans: dict[str, list[Answer]] = defaultdict(list)
        self.sent: Counter[str] = Counter()
        self.per_url: Counter[str] = Counter()
        self.bodies: dict[str, list[Any]] = defaultdict(list)
        self.lock = threading.Lock()

    def on(self, operation: str, *answers: Answer) -> None:
        self.plans[operation].extend(answers)

    def always(self, operation: str, answer: Answer) -> None:
        self.plans[operation] = _Forever(answer)  # type: ignore[assignment]

    def install(self, client: Any) -> None:
        client.meta.events.register("before-send", self._before_send)

    def _before_send(self, request: Any, event_name: str, **_: Any) -> Any:
        _, service, operation = event_name.split(".", 2)
        with self.lock:
            self.sent[operation] += 1
            self.per_url[f"{operation} {request.url.split('?')[0]}"] += 1
            self.bodies[operation].append(request.body)
            plan = self.plans.get(operation)
            answer = plan.pop(0) if plan else None
        if answer is None:
            return None
        if callable(answer):
            return answer(request)
        status, code = answer
        return error_answer(service, request.url, status, code)


class _Forever(list):
    def __init__(self, answer: Answer):
        super().__init__([answer])

    def pop(self, index: int = -1) -> Answer:
        return self[0]


@pytest.fixture
def faults(aws: str, monkeypatch: pytest.MonkeyPatch) -> Faults:
    """Faults on every client the engine creates from here on (after the aws fixture's rules)."""
    f = Faults(aws)
    made = Clients.get

    def get(self: Clients, service: str, region: str) -> Any:
        new = (service, region) not in self._cache
        client = made(self, service, region)
        if new:
            f.install(client)
        return client

    monkeypatch.setattr(Clients, "get", get)
    return f


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policies' tries, with waits of milliseconds; EC2 waiters and task polls too."""
    monkeypatch.setattr(direct, "BLOCK_RETRY", Policy("ebs-block-quick", EBS_BLOCK.attempts, 0.01, 0.05))
    visible = Policy("ec2-visible-quick", EC2_VISIBLE.attempts, 0.01, 0.05)
    monkeypatch.setattr(amis, "EC2_VISIBLE", visible)
    monkeypatch.setattr(s3import, "EC2_VISIBLE", visible)
    monkeypatch.setattr(common, "WAIT_DELAY", 0.01)
    monkeypatch.setattr(s3import, "POLL_DELAY", 0.01)


def form(body: Any) -> dict[str, list[str]]:
    """An EC2 query request's parameters."""
    return parse_qs(body.decode() if isinstance(body, bytes) else body)


def block_sends(faults: Faults) -> list[int]:
    """How often each PutSnapshotBlock (one URL per block) was sent."""
    return [n for key, n in faults.per_url.items() if key.startswith("PutSnapshotBlock ")]


def warnings(events: Recorder) -> str:
    return "\n".join(e.message for e in events.events if e.kind == "warning")


def nothing_left(url: str, disk: Disk) -> bool:
    ec2 = boto(url, "ec2")
    return amis.find_images(ec2, disk.image) == [] and amis.tagged_snapshots(ec2, disk.image.key) == []


# ---------------------------------------------------------------- what is transient

def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


def _transient_cases() -> list[tuple[Callable[[], Exception], bool]]:
    from botocore import exceptions as bx

    return [
        (lambda: bx.ConnectionClosedError(endpoint_url="http://x"), True),
        (lambda: bx.EndpointConnectionError(endpoint_url="http://x"), True),
        (lambda: bx.ReadTimeoutError(endpoint_url="http://x"), True),
        (lambda: bx.ConnectTimeoutError(endpoint_url="http://x"), True),
        (lambda: _client_error("InternalError", 500), True),
        (lambda: _client_error("ServiceUnavailable", 503), True),
        (lambda: _client_error("RequestLimitExceeded", 503), True),
        (lambda: _client_error("RequestThrottledException", 400), True),  # EBS throttling is a 400
        (lambda: _client_error("ThrottlingException", 400), True),
        (lambda: _client_error("RequestTimeout", 400), True),
        (lambda: _client_error("TooManyRequests", 429), True),
        (lambda: _client_error("ValidationException", 400), False),
        (lambda: _client_error("AccessDeniedException", 403), False),
        (lambda: _client_error("UnauthorizedOperation", 403), False),
        (lambda: _client_error("InvalidSnapshot.NotFound", 400), False),
        (lambda: _client_error("InvalidAMIName.Duplicate", 400), False),
        (lambda: bx.ParamValidationError(report="bad"), False),
        (lambda: ValueError("not botocore's"), False),
    ]


@pytest.mark.parametrize("make,expected", _transient_cases())
def test_transient_is_botocores_classification_plus_any_5xx_and_429(make: Callable[[], Exception],
                                                                    expected: bool) -> None:
    assert common.transient(make()) is expected


# ---------------------------------------------------------------- clients (botocore's own retries)

def test_every_client_runs_botocore_standard_retries_six_tries_and_timeouts(aws: str) -> None:
    clients = Clients(aws_target(aws))
    for service in ("ec2", "ebs", "s3"):
        config = clients.get(service, "us-east-1").meta.config
        assert config.retries == {"mode": "standard", "total_max_attempts": 6}
        assert (config.connect_timeout, config.read_timeout) == (10, 60)


@pytest.mark.parametrize("unavailable,ok", [(5, True), (6, False)])
def test_start_snapshot_503s_are_retried_by_botocore_up_to_six_tries(faults: Faults, disk: Disk, events: Recorder,
                                                                     unavailable: int, ok: bool) -> None:
    faults.on("StartSnapshot", *[(503, "ServiceUnavailable")] * unavailable)
    target = aws_target(faults.url)
    if ok:
        aws_mod.deploy(target, disk.image, events.emitter)
        assert faults.sent["StartSnapshot"] == 6
    else:
        with pytest.raises(DeployError, match="StartSnapshot failed"):
            aws_mod.deploy(target, disk.image, events.emitter)
        assert faults.sent["StartSnapshot"] == common.MAX_ATTEMPTS == 6


@pytest.mark.parametrize("status,code", [(400, "ValidationException"), (403, "AccessDeniedException")])
def test_start_snapshot_refused_fails_at_once(faults: Faults, disk: Disk, events: Recorder, status: int,
                                              code: str) -> None:
    faults.on("StartSnapshot", (status, code))
    with pytest.raises(DeployError, match=f"StartSnapshot failed: .*{code}"):
        aws_mod.deploy(aws_target(faults.url), disk.image, events.emitter)
    assert faults.sent["StartSnapshot"] == 1 and faults.sent["PutSnapshotBlock"] == 0


# ---------------------------------------------------------------- PutSnapshotBlock (EBS_BLOCK)

def test_put_snapshot_block_503s_beyond_botocores_tries_are_retried_whole(faults: Faults, disk: Disk,
                                                                          events: Recorder, quick: None) -> None:
    # 6 tries of botocore's all answered 503, and 2 more: only EBS_BLOCK's second try gets through
    faults.on("PutSnapshotBlock", *[(503, "ServiceUnavailable")] * (common.MAX_ATTEMPTS + 2))
    result = aws_mod.deploy(aws_target(faults.url, parallel=1), disk.image, events.emitter)
    sid = result.resources["regions"]["us-east-1"]["snapshot"]
    assert snapshot_blocks(faults.url, sid) == nonzero_blocks(disk.raw)
    assert max(block_sends(faults)) == common.MAX_ATTEMPTS + 3  # one block: 6 + 2 answered 503, then it arrived
    assert faults.sent["PutSnapshotBlock"] == len(nonzero_blocks(disk.raw)) + common.MAX_ATTEMPTS + 2
    assert f"try 2 of {EBS_BLOCK.attempts}" in events.text()


def test_put_snapshot_block_throttled_beyond_botocores_tries_is_retried(faults: Faults, disk: Disk,
                                                                        events: Recorder, quick: None,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "MAX_ATTEMPTS", 2)  # botocore's throttling backoff starts at 1 s: keep it short
    faults.on("PutSnapshotBlock", *[(400, "RequestThrottledException")] * 3)
    result = aws_mod.deploy(aws_target(faults.url, parallel=1), disk.image, events.emitter)
    assert result.created and max(block_sends(faults)) == 4  # throttled 2 + 1, then it arrived


@pytest.mark.parametrize("status,code", [(400, "ValidationException"), (403, "AccessDeniedException")])
def test_put_snapshot_block_refused_fails_at_once_and_leaves_nothing(faults: Faults, disk: Disk, events: Recorder,
                                                                     status: int, code: str) -> None:
    faults.on("PutSnapshotBlock", (status, code))
    with pytest.raises(DeployError, match=rf"PutSnapshotBlock \d+ failed: .*{code}") as info:
        aws_mod.deploy(aws_target(faults.url, parallel=1), disk.image, events.emitter)
    assert "gave up" not in str(info.value)
    assert block_sends(faults)[0] == 1  # the refused block was sent once: no retry of any layer
    assert nothing_left(faults.url, disk)


# ---------------------------------------------------------------- CompleteSnapshot, and cleanup after it

def test_complete_snapshot_refused_fails_at_once_and_deletes_the_snapshot(faults: Faults, disk: Disk,
                                                                          events: Recorder) -> None:
    faults.on("CompleteSnapshot", (400, "ValidationException"))
    with pytest.raises(DeployError, match="CompleteSnapshot failed"):
        aws_mod.deploy(aws_target(faults.url), disk.image, events.emitter)
    assert faults.sent["CompleteSnapshot"] == 1
    assert nothing_left(faults.url, disk)


def test_a_cleanup_that_fails_too_is_a_warning_and_the_first_error_is_raised(faults: Faults, disk: Disk,
                                                                             events: Recorder) -> None:
    faults.on("CompleteSnapshot", (400, "ValidationException"))
    faults.on("DeleteSnapshot", (403, "UnauthorizedOperation"))
    with pytest.raises(DeployError, match="CompleteSnapshot failed") as info:
        aws_mod.deploy(aws_target(faults.url), disk.image, events.emitter)
    assert faults.sent["DeleteSnapshot"] == 1
    assert "DeleteSnapshot snap-" in warnings(events) and "UnauthorizedOperation" in warnings(events)
    assert any("UnauthorizedOperation" in n for n in info.value.__notes__)


# ---------------------------------------------------------------- waiters (Stubber: real botocore)

def _stubbed_ec2() -> Any:
    import boto3

    return boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


WAITS = {
    "image": ("describe_images", "InvalidAMIID.NotFound", lambda state: {"Images": [{"ImageId": "ami-1", **state}]},
              lambda ec2: amis.wait_image(ec2, "ami-1", 5), {"ImageIds": ["ami-1"]}),
    "snapshot": ("describe_snapshots", "InvalidSnapshot.NotFound",
                 lambda state: {"Snapshots": [{"SnapshotId": "snap-1", **state}]},
                 lambda ec2: direct.wait_snapshot(ec2, "snap-1", 5), {"SnapshotIds": ["snap-1"]}),
}
DONE = {"image": {"State": "available"}, "snapshot": {"State": "completed"}}
FAILED = {"image": {"State": "failed", "StateReason": {"Code": "x", "Message": "Unsupported kernel"}},
          "snapshot": {"State": "error", "StateMessage": "Unsupported kernel"}}


@pytest.mark.parametrize("kind", WAITS)
def test_a_not_found_right_after_the_create_is_waited_out(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.stub import Stubber

    monkeypatch.setattr(common, "WAIT_DELAY", 0.01)
    method, not_found, shape, wait, params = WAITS[kind]
    ec2 = _stubbed_ec2()
    with Stubber(ec2) as stub:
        stub.add_client_error(method, not_found, "not yet", 400, expected_params=params)
        stub.add_client_error(method, not_found, "not yet", 400, expected_params=params)
        stub.add_response(method, shape(DONE[kind]), params)
        wait(ec2)
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("kind", WAITS)
def test_a_failed_state_ends_the_wait_as_a_deploy_error(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.stub import Stubber

    monkeypatch.setattr(common, "WAIT_DELAY", 0.01)
    method, _, shape, wait, params = WAITS[kind]
    ec2 = _stubbed_ec2()
    with Stubber(ec2) as stub:
        stub.add_response(method, shape({"State": "pending"}), params)
        stub.add_response(method, shape(FAILED[kind]), params)
        with pytest.raises(DeployError, match="failed: .*Unsupported kernel"):
            wait(ec2)
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("kind", WAITS)
def test_an_error_no_acceptor_names_ends_the_wait_at_once(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.stub import Stubber

    monkeypatch.setattr(common, "WAIT_DELAY", 0.01)
    method, _, _, wait, params = WAITS[kind]
    ec2 = _stubbed_ec2()
    with Stubber(ec2) as stub:
        stub.add_client_error(method, "UnauthorizedOperation", "no", 403, expected_params=params)
        with pytest.raises(DeployError, match=r"failed: Describe\w+ answered UnauthorizedOperation"):
            wait(ec2)
        stub.assert_no_pending_responses()  # one poll: not waited out


@pytest.mark.parametrize("kind", WAITS)
def test_a_wait_that_runs_out_names_the_last_state(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.stub import Stubber

    method, not_found, shape, _, params = WAITS[kind]
    ec2 = _stubbed_ec2()
    what = {"image": ("ImageAvailable", "AMI ami-1"), "snapshot": ("SnapshotCompleted", "snapshot snap-1")}[kind]
    with Stubber(ec2) as stub:
        stub.add_response(method, shape({"State": "pending"}), params)
        stub.add_client_error(method, not_found, "not yet", 400, expected_params=params)
        with pytest.raises(DeployError, match=rf"not ready after 0 s \(state: Describe\w+ answered {not_found}"):
            common.wait_for(ec2, what[0], what[1], 0.01, delay=0.01, **params)  # 2 polls
        stub.assert_no_pending_responses()


def test_a_waiter_that_cannot_reach_ec2_is_a_deploy_error_naming_the_call() -> None:
    import boto3
    from botocore.config import Config

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
                       aws_access_key_id="x", aws_secret_access_key="x",
                       config=Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=2))
    with pytest.raises(DeployError, match="AMI ami-1: DescribeImages failed: Could not connect"):
        amis.wait_image(ec2, "ami-1", 5)


# ---------------------------------------------------------------- RegisterImage

def _forward_and_lose(request: Any) -> Any:
    """The request reaches EC2 (moto) and is carried out; its answer is lost on the way back."""
    import urllib3
    from botocore.exceptions import ConnectionClosedError

    urllib3.request(request.method, request.url, body=request.body, headers=dict(request.headers))
    raise ConnectionClosedError(endpoint_url=request.url)


def test_a_register_image_whose_answer_was_lost_is_adopted(faults: Faults, disk: Disk, events: Recorder,
                                                           quick: None) -> None:
    url = faults.url
    faults.on("RegisterImage", _forward_and_lose)  # botocore's retry then meets InvalidAMIName.Duplicate
    result = aws_mod.deploy(aws_target(url), disk.image, events.emitter)
    home = result.resources["regions"]["us-east-1"]
    assert faults.sent["RegisterImage"] == 2
    assert [i["ImageId"] for i in images_of(url, "us-east-1", disk.image)] == [home["ami"]]
    assert "adopted" in events.text()
    img = boto(url, "ec2").describe_images(ImageIds=[home["ami"]])["Images"][0]
    assert amis.root_snapshot(img) == home["snapshot"]
    tags = {t["Key"]: t["Value"] for t in img["Tags"]}  # tagged at birth, by the try whose answer was lost
    assert tags["pim:key"] == disk.image.key and tags["pim:snapshot"] == home["snapshot"]
    assert faults.sent["CreateTags"] == 0


def test_a_name_taken_by_an_ami_of_another_snapshot_fails_naming_it(faults: Faults, disk: Disk, events: Recorder,
                                                                    quick: None) -> None:
    url = faults.url
    name = ami_name(disk.image)
    theirs: list[str] = []

    def race(request: Any) -> None:  # another deploy registers the name first, from its own snapshot
        other = boto(url, "ebs").start_snapshot(VolumeSize=1)["SnapshotId"]
        theirs.append(boto(url, "ec2").register_image(
            Name=name, RootDeviceName="/dev/xvda",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": other}}])["ImageId"])
        return None

    faults.on("RegisterImage", race)
    with pytest.raises(DeployError, match=rf"an AMI named {name} already exists \(ami-") as info:
        aws_mod.deploy(aws_target(url), disk.image, events.emitter)
    assert theirs[0] in str(info.value)
    assert faults.sent["RegisterImage"] == 1
    assert amis.tagged_snapshots(boto(url, "ec2"), disk.image.key) == []  # our snapshot: deleted
    assert boto(url, "ec2").describe_images(ImageIds=theirs)["Images"][0]["State"] == "available"  # theirs: kept


def test_a_duplicate_name_with_no_ami_visible_fails_after_ec2_visible(monkeypatch: pytest.MonkeyPatch,
                                                                       disk: Disk, events: Recorder) -> None:
    from botocore.stub import Stubber

    monkeypatch.setattr(amis, "EC2_VISIBLE", Policy("ec2-visible-quick", 3, 0.01, 0.02))
    target = aws_target("http://127.0.0.1:9")
    ec2 = _stubbed_ec2()
    name = ami_name(disk.image)
    with Stubber(ec2) as stub:
        stub.add_client_error("register_image", "InvalidAMIName.Duplicate", "in use", 400)
        for _ in range(3):
            stub.add_response("describe_images", {"Images": []},
                              {"Owners": ["self"], "Filters": [{"Name": "name", "Values": [name]}]})
        stub.add_response("delete_snapshot", {}, {"SnapshotId": "snap-1"})
        with pytest.raises(DeployError, match=f"AMI name {name} is in use, but no AMI of that name is visible"):
            amis.register(_StubClients(target, {"ec2": ec2}), target, disk.image, "snap-1", events.emitter)
        stub.assert_no_pending_responses()


def test_register_image_refused_fails_at_once_and_a_failed_cleanup_does_not_hide_it(faults: Faults, disk: Disk,
                                                                                    events: Recorder) -> None:
    faults.on("RegisterImage", (400, "InvalidParameterValue"))
    faults.on("DeleteSnapshot", (403, "UnauthorizedOperation"))
    with pytest.raises(DeployError, match="RegisterImage failed in us-east-1: .*InvalidParameterValue"):
        aws_mod.deploy(aws_target(faults.url), disk.image, events.emitter)
    assert faults.sent["RegisterImage"] == 1 and faults.sent["DeleteSnapshot"] == 1
    assert "DeleteSnapshot snap-" in warnings(events)


def test_register_image_refused_deletes_the_snapshot(faults: Faults, disk: Disk, events: Recorder) -> None:
    faults.on("RegisterImage", (403, "UnauthorizedOperation"))
    with pytest.raises(DeployError, match="RegisterImage failed"):
        aws_mod.deploy(aws_target(faults.url), disk.image, events.emitter)
    assert faults.sent["RegisterImage"] == 1
    assert nothing_left(faults.url, disk)


def test_the_image_is_deregistered_when_its_wait_fails(faults: Faults, disk: Disk, events: Recorder,
                                                       quick: None) -> None:
    faults.on("DescribeImages", None, None, (403, "UnauthorizedOperation"))  # usable()'s two look-ups pass
    with pytest.raises(DeployError, match="AMI ami-.*UnauthorizedOperation"):
        aws_mod.deploy(aws_target(faults.url), disk.image, events.emitter)
    assert faults.sent["DeregisterImage"] == 1
    assert nothing_left(faults.url, disk)


# ---------------------------------------------------------------- CopyImage

def test_a_copy_is_tagged_at_birth_with_its_own_snapshot(faults: Faults, disk: Disk, events: Recorder,
                                                         quick: None) -> None:
    url = faults.url
    result = aws_mod.deploy(aws_target(url, copy_to=["eu-west-1"]), disk.image, events.emitter)
    assert faults.sent["CreateTags"] == 0  # neither the AMIs nor the copy's snapshot needed one
    copy = result.resources["regions"]["eu-west-1"]
    ec2 = boto(url, "ec2", "eu-west-1")
    img = ec2.describe_images(ImageIds=[copy["ami"]])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in img["Tags"]}
    assert tags["pim:key"] == disk.image.key and "pim:snapshot" not in tags  # no id from another region
    assert copy["snapshot"] == amis.root_snapshot(img) != result.resources["regions"]["us-east-1"]["snapshot"]
    snap = ec2.describe_snapshots(SnapshotIds=[copy["snapshot"]])["Snapshots"][0]
    assert {t["Key"]: t["Value"] for t in snap["Tags"]}["pim:key"] == disk.image.key


def test_a_copy_image_retried_by_botocore_resends_its_client_token(faults: Faults, disk: Disk, events: Recorder,
                                                                   quick: None) -> None:
    faults.on("CopyImage", (503, "Unavailable"))
    aws_mod.deploy(aws_target(faults.url, copy_to=["eu-west-1"]), disk.image, events.emitter)
    tokens = [form(body)["ClientToken"] for body in faults.bodies["CopyImage"]]
    assert len(tokens) == 2 and tokens[0] == tokens[1]


def test_a_refused_copy_fails_at_once_naming_copy_image(faults: Faults, disk: Disk, events: Recorder,
                                                        quick: None) -> None:
    faults.on("CopyImage", (400, "InvalidRequest"))
    with pytest.raises(DeployError, match="CopyImage of ami-.* to eu-west-1 failed: .*InvalidRequest"):
        aws_mod.deploy(aws_target(faults.url, copy_to=["eu-west-1"]), disk.image, events.emitter)
    assert faults.sent["CopyImage"] == 1
    assert images_of(faults.url, "eu-west-1", disk.image) == []


# ---------------------------------------------------------------- look-ups and removal

@pytest.mark.parametrize("operation", ["DescribeImages", "DescribeSnapshots"])
def test_a_refused_look_up_fails_at_once_as_a_deploy_error(faults: Faults, disk: Disk, events: Recorder,
                                                           operation: str) -> None:
    faults.on(operation, (403, "UnauthorizedOperation"))
    with pytest.raises(DeployError, match=f"AWS deploy to us-east-1 failed: .*UnauthorizedOperation.*{operation}"):
        aws_mod.deploy(aws_target(faults.url), disk.image, events.emitter)
    assert faults.sent[operation] == 1 and faults.sent["StartSnapshot"] == 0


def test_a_refused_deregister_fails_at_once_and_gone_is_success(faults: Faults, disk: Disk, events: Recorder,
                                                                quick: None) -> None:
    target = aws_target(faults.url)
    aws_mod.deploy(target, disk.image, events.emitter)
    faults.on("DeregisterImage", (403, "UnauthorizedOperation"))
    with pytest.raises(DeployError, match="AWS delete in us-east-1 failed: .*UnauthorizedOperation"):
        aws_mod.delete(target, disk.image, events.emitter)
    assert faults.sent["DeregisterImage"] == 1
    removed = aws_mod.delete(target, disk.image, events.emitter)
    assert len(removed) == 2  # the AMI and its snapshot
    faults.on("DescribeImages", lambda r: ec2_answer(r.url, "DescribeImages", "<imagesSet><item><imageId>"
                                                     + removed[0] + "</imageId><imageState>available</imageState>"
                                                     "</item></imagesSet>"))
    assert aws_mod.delete(target, disk.image, events.emitter) == []  # InvalidAMIID.* from a stale look-up: gone


# ---------------------------------------------------------------- S3 + ImportSnapshot

TASK = "import-snap-0123456789abcdef0"


def import_answer(request: Any) -> Any:
    return ec2_answer(request.url, "ImportSnapshot", f"<importTaskId>{TASK}</importTaskId>"
                                                     "<snapshotTaskDetail><status>active</status></snapshotTaskDetail>")


def task_answer(status: str, sid: str = "", message: str = "") -> Callable[[Any], Any]:
    detail = f"<status>{status}</status><progress>50</progress><statusMessage>{message}</statusMessage>"
    detail += f"<snapshotId>{sid}</snapshotId>" if sid else ""
    body = f"<importSnapshotTaskSet><item><importTaskId>{TASK}</importTaskId><snapshotTaskDetail>{detail}" \
           f"</snapshotTaskDetail></item></importSnapshotTaskSet>"
    return lambda request: ec2_answer(request.url, "DescribeImportSnapshotTasks", body)


def no_task(request: Any) -> Any:
    return ec2_answer(request.url, "DescribeImportSnapshotTasks", "<importSnapshotTaskSet/>")


def run_import(url: str, disk: Disk, events: Recorder, **kw: Any) -> str:
    target = aws_target(url, method="import", s3_bucket="pim-unused", **kw)
    ec2 = Clients(target).get("ec2", "us-east-1")
    return s3import.import_snapshot(ec2, "pim-unused", "disk.raw", disk.image, target, events.emitter)


def new_snapshot(url: str) -> str:
    return boto(url, "ebs").start_snapshot(VolumeSize=1)["SnapshotId"]


def snapshot_tags(url: str, sid: str) -> dict[str, str]:
    snap = boto(url, "ec2").describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    return {t["Key"]: t["Value"] for t in snap.get("Tags", [])}


def test_import_snapshot_sends_one_client_token_per_import_that_botocore_resends(faults: Faults, disk: Disk,
                                                                                 events: Recorder,
                                                                                 quick: None) -> None:
    url = faults.url
    sid = new_snapshot(url)
    faults.on("ImportSnapshot", (503, "Unavailable"), import_answer, import_answer)
    faults.always("DescribeImportSnapshotTasks", task_answer("completed", sid))
    assert run_import(url, disk, events) == sid
    assert run_import(url, disk, events) == sid
    tokens = [form(body)["ClientToken"][0] for body in faults.bodies["ImportSnapshot"]]
    assert len(tokens) == 3 and tokens[0] == tokens[1] != tokens[2]  # botocore's retry: same; next import: new
    spec = form(faults.bodies["ImportSnapshot"][0])
    assert spec["TagSpecification.1.ResourceType"] == ["import-snapshot-task"]
    assert snapshot_tags(url, sid)["pim:key"] == disk.image.key  # tagged when the task completed


def test_import_snapshot_refused_fails_at_once(faults: Faults, disk: Disk, events: Recorder, quick: None) -> None:
    faults.on("ImportSnapshot", (403, "UnauthorizedOperation"))
    with pytest.raises(DeployError, match="ImportSnapshot failed: .*UnauthorizedOperation"):
        run_import(faults.url, disk, events)
    assert faults.sent["ImportSnapshot"] == 1 and faults.sent["DescribeImportSnapshotTasks"] == 0


def test_an_import_task_in_error_ends_the_poll_as_a_failure(faults: Faults, disk: Disk, events: Recorder,
                                                            quick: None) -> None:
    faults.on("ImportSnapshot", import_answer)
    faults.on("DescribeImportSnapshotTasks", task_answer("active"), task_answer("error", message="Disk unreadable"))
    with pytest.raises(DeployError, match=rf"ImportSnapshot {TASK} failed \(error\): Disk unreadable"):
        run_import(faults.url, disk, events)
    assert faults.sent["DescribeImportSnapshotTasks"] == 2


def test_a_poll_that_fails_transiently_or_misses_the_new_task_is_tried_again(faults: Faults, disk: Disk,
                                                                             events: Recorder, quick: None) -> None:
    url = faults.url
    sid = new_snapshot(url)
    faults.on("ImportSnapshot", import_answer)
    # first poll: all of botocore's tries answered 503; then the task is not listed yet; then done
    faults.on("DescribeImportSnapshotTasks", *[(503, "Unavailable")] * common.MAX_ATTEMPTS, no_task,
              task_answer("completed", sid))
    assert run_import(url, disk, events) == sid
    assert faults.sent["DescribeImportSnapshotTasks"] == common.MAX_ATTEMPTS + 2
    assert f"try 2 of {EC2_VISIBLE.attempts}" in events.text() and f"try 3 of {EC2_VISIBLE.attempts}" in events.text()


def test_a_refused_poll_fails_at_once(faults: Faults, disk: Disk, events: Recorder, quick: None) -> None:
    faults.on("ImportSnapshot", import_answer)
    faults.on("DescribeImportSnapshotTasks", (403, "UnauthorizedOperation"))
    with pytest.raises(DeployError, match=f"DescribeImportSnapshotTasks {TASK} failed: .*UnauthorizedOperation"):
        run_import(faults.url, disk, events)
    assert faults.sent["DescribeImportSnapshotTasks"] == 1


def test_a_task_never_listed_is_a_vanished_task_after_ec2_visible(faults: Faults, disk: Disk, events: Recorder,
                                                                  quick: None) -> None:
    faults.on("ImportSnapshot", import_answer)
    faults.always("DescribeImportSnapshotTasks", no_task)
    with pytest.raises(DeployError, match="task vanished"):
        run_import(faults.url, disk, events)
    assert faults.sent["DescribeImportSnapshotTasks"] == EC2_VISIBLE.attempts


@pytest.mark.parametrize("cancel", [None, (403, "UnauthorizedOperation")])
def test_an_import_past_its_deadline_is_cancelled(faults: Faults, disk: Disk, events: Recorder, quick: None,
                                                  cancel: Answer) -> None:
    faults.on("ImportSnapshot", import_answer)
    faults.always("DescribeImportSnapshotTasks", task_answer("active"))
    faults.on("CancelImportTask", cancel or (lambda r: ec2_answer(r.url, "CancelImportTask",
                                                                  f"<importTaskId>{TASK}</importTaskId>")))
    with pytest.raises(DeployError, match=rf"ImportSnapshot {TASK} did not finish within 0 s \(last: active 50%\)"):
        run_import(faults.url, disk, events, task_timeout=0.2)
    assert faults.sent["CancelImportTask"] == 1
    assert ("CancelImportTask" in warnings(events)) == (cancel is not None)


def test_the_imported_snapshot_not_found_yet_is_tagged_on_a_later_try(faults: Faults, disk: Disk,
                                                                      events: Recorder, quick: None) -> None:
    url = faults.url
    sid = new_snapshot(url)
    faults.on("ImportSnapshot", import_answer)
    faults.on("DescribeImportSnapshotTasks", task_answer("completed", sid))
    faults.on("CreateTags", (400, "InvalidSnapshot.NotFound"), (400, "InvalidSnapshot.NotFound"))
    assert run_import(url, disk, events) == sid
    assert faults.sent["CreateTags"] == 3
    assert snapshot_tags(url, sid)["pim:key"] == disk.image.key


def test_an_imported_snapshot_that_cannot_be_tagged_is_deleted(faults: Faults, disk: Disk, events: Recorder,
                                                               quick: None) -> None:
    from botocore.exceptions import ClientError

    url = faults.url
    sid = new_snapshot(url)
    faults.on("ImportSnapshot", import_answer)
    faults.on("DescribeImportSnapshotTasks", task_answer("completed", sid))
    faults.on("CreateTags", (403, "UnauthorizedOperation"))
    with pytest.raises(DeployError, match=f"CreateTags on imported snapshot {sid} failed: .*UnauthorizedOperation"):
        run_import(url, disk, events)
    assert faults.sent["CreateTags"] == 1
    with pytest.raises(ClientError, match="NotFound"):  # untagged, it would be lost to cleanup_orphans
        boto(url, "ec2").describe_snapshots(SnapshotIds=[sid])


def _import_deploy(url: str, bucket: str, disk: Disk, events: Recorder) -> Any:
    boto(url, "s3").create_bucket(Bucket=bucket)
    target = aws_target(url, method="import", s3_bucket=bucket)
    fake = FakeImportEc2(boto(url, "ec2"), url)
    return aws_mod.deploy(target, disk.image, events.emitter, clients=_StubClients(target, {"ec2": fake})), fake


@pytest.mark.parametrize("abort", [None, (403, "AccessDenied")])
def test_an_s3_upload_part_refused_fails_at_once_and_aborts_the_upload(faults: Faults, disk: Disk,
                                                                       events: Recorder, quick: None,
                                                                       abort: Answer) -> None:
    bucket = "pim-refused-part" if abort is None else "pim-refused-part-and-abort"
    faults.on("UploadPart", (403, "AccessDenied"))
    faults.on("AbortMultipartUpload", abort)
    with pytest.raises(DeployError, match="S3 UploadPart 1 failed: .*AccessDenied"):
        _import_deploy(faults.url, bucket, disk, events)
    assert faults.sent["UploadPart"] == 1 and faults.sent["AbortMultipartUpload"] == 1
    uploads = boto(faults.url, "s3").list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    if abort is None:
        assert uploads == [] and warnings(events) == ""
    else:  # the abort failed too: a warning, and the UploadPart error is the one raised
        assert len(uploads) == 1 and "S3 AbortMultipartUpload" in warnings(events)


def test_an_s3_object_that_cannot_be_deleted_is_only_a_warning(faults: Faults, disk: Disk, events: Recorder,
                                                              quick: None) -> None:
    faults.on("DeleteObject", (403, "AccessDenied"))
    result, _ = _import_deploy(faults.url, "pim-kept-object", disk, events)
    assert result.created
    assert "could not delete s3://pim-kept-object/" in warnings(events)


# ---------------------------------------------------------------- one 503 of any call: botocore's retry

@pytest.mark.parametrize("operation", ["DescribeImages", "DescribeSnapshots", "StartSnapshot", "PutSnapshotBlock",
                                       "CompleteSnapshot", "RegisterImage", "CopyImage"])
def test_one_503_of_any_deploy_call_is_retried_by_botocore(faults: Faults, disk: Disk, events: Recorder,
                                                           quick: None, operation: str) -> None:
    faults.on(operation, (503, "Unavailable"))
    copy = ["eu-west-1"] if operation == "CopyImage" else []
    result = aws_mod.deploy(aws_target(faults.url, copy_to=copy), disk.image, events.emitter)
    assert result.created and faults.sent[operation] >= 2
    assert " of 5 in " not in events.text() and " of 10 in " not in events.text()  # no policy's retry was needed


@pytest.mark.parametrize("operation", ["DeregisterImage", "DeleteSnapshot"])
def test_one_503_of_a_removal_is_retried_by_botocore(faults: Faults, disk: Disk, events: Recorder, quick: None,
                                                     operation: str) -> None:
    target = aws_target(faults.url)
    aws_mod.deploy(target, disk.image, events.emitter)
    faults.on(operation, (503, "Unavailable"))
    assert len(aws_mod.delete(target, disk.image, events.emitter)) == 2
    assert faults.sent[operation] == 2 and nothing_left(faults.url, disk)


@pytest.mark.parametrize("operation", ["CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
                                       "DeleteObject"])
def test_one_503_of_an_s3_call_is_retried_by_botocore(faults: Faults, disk: Disk, events: Recorder, quick: None,
                                                      operation: str) -> None:
    faults.on(operation, (503, "SlowDown"))
    bucket = f"pim-503-{operation.lower()}"
    result, _ = _import_deploy(faults.url, bucket, disk, events)
    size = disk.image.virtual_size
    normal = -(-size // s3import.part_size(size)) if operation == "UploadPart" else 1
    assert result.created and faults.sent[operation] == normal + 1
    assert boto(faults.url, "s3").list_objects_v2(Bucket=bucket).get("KeyCount") == 0
