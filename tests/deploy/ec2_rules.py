"""Rules of the real EC2 API that moto does not keep, added to the clients PIM makes.

One rule per function, each with its source; the `aws` fixture installs them all on
every client the engine creates (`Clients.get`), so every AWS test runs under them.
"""

from __future__ import annotations

import threading
from typing import Any

# EC2 API Reference, "Ensuring idempotency in Amazon EC2 API requests": a request repeated
# with the same client token returns the result of the first one, without doing anything
# again, whatever has become of that result since (a copied AMI that was deregistered is
# still the answer). Tokens are per account and region.
_TOKENS: dict[tuple[str, str, str], dict[str, Any]] = {}
_LOCK = threading.Lock()
IDEMPOTENT = ("CopyImage",)


def client_token_rule(client: Any) -> None:
    """Make `client` answer a repeated ClientToken of an IDEMPOTENT operation with the
    first result, as EC2 does."""
    region = client.meta.region_name

    def before(params: dict[str, Any], model: Any, **_: Any) -> Any:
        token = (params.get("body") or {}).get("ClientToken") if isinstance(params.get("body"), dict) else None
        if model.name not in IDEMPOTENT or not token:
            return None
        with _LOCK:
            first = _TOKENS.get((region, model.name, token))
        return (_Http(), dict(first)) if first is not None else None

    def after(parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        token = context.get("pim_client_token")
        if token and "Error" not in parsed:
            with _LOCK:
                _TOKENS.setdefault((region, model.name, token), dict(parsed))

    def remember(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        if model.name in IDEMPOTENT:
            context["pim_client_token"] = params.get("ClientToken")

    client.meta.events.register("provide-client-params.ec2.*", remember)
    client.meta.events.register("before-call.ec2.*", before)
    client.meta.events.register("after-call.ec2.*", after)


class _Http:
    """The HTTP response botocore expects beside a short-circuited result."""

    status_code = 200
    headers: dict[str, str] = {}
    content = b""
