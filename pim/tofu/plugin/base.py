"""What a provider built on this package implements: schemas, resources, data sources.

A value of a resource is a dict with every attribute of its schema (None for null,
cty.UNKNOWN for "known after apply"). The server (server.py) decodes Terraform's
requests into such dicts and calls these methods; a method reports a problem by
raising Diag (one) or Diags (several), which Terraform shows with the attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pim.tofu.plugin import cty


@dataclass(frozen=True)
class Attr:
    name: str
    type: Any  # cty type: "string", "number", "bool", ["map", "string"], ...
    description: str
    required: bool = False
    optional: bool = False
    computed: bool = False
    sensitive: bool = False


@dataclass(frozen=True)
class Schema:
    attrs: tuple[Attr, ...]
    description: str = ""
    version: int = 0

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attrs]

    def conform(self, values: dict[str, Any]) -> dict[str, Any]:
        """Every attribute present, each in its wire type; unknown names dropped."""
        return {a.name: cty.conform(values.get(a.name), a.type) for a in self.attrs}

    def unknown_computed(self, values: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
        """values with every computed-only attribute not in keep set to UNKNOWN (a replacement's plan)."""
        out = dict(values)
        for a in self.attrs:
            if a.computed and not a.optional and not a.required and a.name not in keep:
                out[a.name] = cty.UNKNOWN
        return out


class Diag(Exception):
    def __init__(self, summary: str, detail: str = "", attribute: str | None = None, warning: bool = False):
        super().__init__(summary)
        self.summary, self.detail, self.attribute, self.warning = summary, detail, attribute, warning


class Diags(Exception):
    def __init__(self, diags: list[Diag]):
        super().__init__("; ".join(d.summary for d in diags))
        self.diags = diags


@dataclass
class Plan:
    state: dict[str, Any] | None
    replace: list[str] = field(default_factory=list)  # attributes whose change forces a replacement
    warnings: list[Diag] = field(default_factory=list)  # shown with the plan (Diag(..., warning=True))


class Resource:
    """A managed resource type. Override what the type supports."""

    schema: Schema

    def validate(self, config: dict[str, Any]) -> None:
        """Raise Diag(s) for a bad configuration (values may be UNKNOWN here)."""

    def upgrade(self, version: int, state: dict[str, Any]) -> dict[str, Any]:
        """A stored state of an older schema version, in the current one."""
        if version > self.schema.version:
            raise Diag(f"the state was written by a newer provider (schema version {version}, this provider "
                       f"knows {self.schema.version})", "Upgrade the pim provider to read it.")
        return state

    def read(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """The current state of what state describes; None when it is gone (drift)."""
        return state

    def plan(self, prior: dict[str, Any] | None, proposed: dict[str, Any], config: dict[str, Any]) -> Plan:
        raise NotImplementedError

    def create(self, planned: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def update(self, prior: dict[str, Any], planned: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        return planned

    def delete(self, prior: dict[str, Any]) -> None:
        pass

    def import_state(self, id: str) -> dict[str, Any]:
        raise Diag("import is not supported for this resource type")


class DataSource:
    schema: Schema

    def validate(self, config: dict[str, Any]) -> None:
        pass

    def read(self, config: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class Provider:
    schema: Schema = Schema(())
    resources: dict[str, Resource] = {}
    data_sources: dict[str, DataSource] = {}

    def configure(self, config: dict[str, Any]) -> None:
        pass
