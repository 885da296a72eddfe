"""The tfplugin6 messages PIM uses, described in Python and built at import time.

Only the wire matters to Terraform: field numbers and types, and the RPC paths
(/tfplugin6.Provider/<Method>). So the messages here have flat names of our own
(`GetProviderSchemaResponse`, not `GetProviderSchema.Response`), enums travel as
int32, a proto `map<string, X>` is a repeated entry message (key = 1, value = 2),
and a oneof is a set of plain fields of which we fill one. No protoc, no
generated code: a FileDescriptorProto goes into a private descriptor pool.

Field numbers follow Terraform's published tfplugin6 protocol (6.x).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "pimtf6"
SERVICE = "tfplugin6.Provider"

# name: [(field, number, type, repeated)], type: a scalar below or another message's name.
_R = True
MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "Empty": [],
    "DynamicValue": [("msgpack", 1, "bytes", False), ("json", 2, "bytes", False)],
    "AttributePathStep": [("attribute_name", 1, "string", False), ("element_key_string", 2, "string", False),
                          ("element_key_int", 3, "int64", False)],
    "AttributePath": [("steps", 1, "AttributePathStep", _R)],
    "Diagnostic": [("severity", 1, "int32", False), ("summary", 2, "string", False),
                   ("detail", 3, "string", False), ("attribute", 4, "AttributePath", False)],
    "RawState": [("json", 1, "bytes", False)],
    "Attribute": [("name", 1, "string", False), ("type", 2, "bytes", False), ("description", 3, "string", False),
                  ("required", 4, "bool", False), ("optional", 5, "bool", False), ("computed", 6, "bool", False),
                  ("sensitive", 7, "bool", False), ("description_kind", 8, "int32", False),
                  ("deprecated", 9, "bool", False)],
    "Block": [("version", 1, "int64", False), ("attributes", 2, "Attribute", _R),
              ("description", 4, "string", False), ("description_kind", 5, "int32", False)],
    "Schema": [("version", 1, "int64", False), ("block", 2, "Block", False)],
    "SchemaEntry": [("key", 1, "string", False), ("value", 2, "Schema", False)],
    "ServerCapabilities": [("plan_destroy", 1, "bool", False), ("get_provider_schema_optional", 2, "bool", False)],
    "TypeName": [("type_name", 1, "string", False)],
    "GetMetadataResponse": [("server_capabilities", 1, "ServerCapabilities", False),
                            ("diagnostics", 2, "Diagnostic", _R), ("data_sources", 3, "TypeName", _R),
                            ("resources", 4, "TypeName", _R)],
    "GetProviderSchemaResponse": [("provider", 1, "Schema", False), ("resource_schemas", 2, "SchemaEntry", _R),
                                  ("data_source_schemas", 3, "SchemaEntry", _R),
                                  ("diagnostics", 4, "Diagnostic", _R),
                                  ("server_capabilities", 6, "ServerCapabilities", False)],
    "GetFunctionsResponse": [("diagnostics", 2, "Diagnostic", _R)],
    "ConfigRequest": [("config", 1, "DynamicValue", False)],  # ValidateProviderConfig
    "Diagnostics2": [("diagnostics", 2, "Diagnostic", _R)],
    "Diagnostics1": [("diagnostics", 1, "Diagnostic", _R)],
    "TypedConfigRequest": [("type_name", 1, "string", False), ("config", 2, "DynamicValue", False)],
    "UpgradeResourceStateRequest": [("type_name", 1, "string", False), ("version", 2, "int64", False),
                                    ("raw_state", 3, "RawState", False)],
    "UpgradeResourceStateResponse": [("upgraded_state", 1, "DynamicValue", False),
                                     ("diagnostics", 2, "Diagnostic", _R)],
    "ConfigureProviderRequest": [("terraform_version", 1, "string", False), ("config", 2, "DynamicValue", False)],
    "ReadResourceRequest": [("type_name", 1, "string", False), ("current_state", 2, "DynamicValue", False),
                            ("private", 3, "bytes", False)],
    "ReadResourceResponse": [("new_state", 1, "DynamicValue", False), ("diagnostics", 2, "Diagnostic", _R),
                             ("private", 3, "bytes", False)],
    "PlanResourceChangeRequest": [("type_name", 1, "string", False), ("prior_state", 2, "DynamicValue", False),
                                  ("proposed_new_state", 3, "DynamicValue", False),
                                  ("config", 4, "DynamicValue", False), ("prior_private", 5, "bytes", False)],
    "PlanResourceChangeResponse": [("planned_state", 1, "DynamicValue", False),
                                   ("requires_replace", 2, "AttributePath", _R),
                                   ("planned_private", 3, "bytes", False), ("diagnostics", 4, "Diagnostic", _R)],
    "ApplyResourceChangeRequest": [("type_name", 1, "string", False), ("prior_state", 2, "DynamicValue", False),
                                   ("planned_state", 3, "DynamicValue", False), ("config", 4, "DynamicValue", False),
                                   ("planned_private", 5, "bytes", False)],
    "ApplyResourceChangeResponse": [("new_state", 1, "DynamicValue", False), ("private", 2, "bytes", False),
                                    ("diagnostics", 3, "Diagnostic", _R)],
    "ImportResourceStateRequest": [("type_name", 1, "string", False), ("id", 2, "string", False)],
    "ImportedResource": [("type_name", 1, "string", False), ("state", 2, "DynamicValue", False),
                         ("private", 3, "bytes", False)],
    "ImportResourceStateResponse": [("imported_resources", 1, "ImportedResource", _R),
                                    ("diagnostics", 2, "Diagnostic", _R)],
    "ReadDataSourceRequest": [("type_name", 1, "string", False), ("config", 2, "DynamicValue", False)],
    "ReadDataSourceResponse": [("state", 1, "DynamicValue", False), ("diagnostics", 2, "Diagnostic", _R)],
    "StopProviderResponse": [("Error", 1, "string", False)],
}

# method: (request message, response message)
METHODS: dict[str, tuple[str, str]] = {
    "GetMetadata": ("Empty", "GetMetadataResponse"),
    "GetProviderSchema": ("Empty", "GetProviderSchemaResponse"),
    "GetFunctions": ("Empty", "GetFunctionsResponse"),
    "ValidateProviderConfig": ("ConfigRequest", "Diagnostics2"),
    "ValidateResourceConfig": ("TypedConfigRequest", "Diagnostics1"),
    "ValidateDataResourceConfig": ("TypedConfigRequest", "Diagnostics1"),
    "UpgradeResourceState": ("UpgradeResourceStateRequest", "UpgradeResourceStateResponse"),
    "ConfigureProvider": ("ConfigureProviderRequest", "Diagnostics1"),
    "ReadResource": ("ReadResourceRequest", "ReadResourceResponse"),
    "PlanResourceChange": ("PlanResourceChangeRequest", "PlanResourceChangeResponse"),
    "ApplyResourceChange": ("ApplyResourceChangeRequest", "ApplyResourceChangeResponse"),
    "ImportResourceState": ("ImportResourceStateRequest", "ImportResourceStateResponse"),
    "ReadDataSource": ("ReadDataSourceRequest", "ReadDataSourceResponse"),
    "StopProvider": ("Empty", "StopProviderResponse"),
}

_SCALARS = {
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
}


def _build() -> dict[str, Any]:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name=f"{PACKAGE}.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, repeated in fields:
            field = msg.field.add(name=fname, number=number,
                                  label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if ftype in _SCALARS:
                field.type = _SCALARS[ftype]
            else:
                field.type, field.type_name = F.TYPE_MESSAGE, f".{PACKAGE}.{ftype}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in MESSAGES}


M = _build()  # message classes by name

# Diagnostic.severity
ERROR, WARNING = 1, 2
