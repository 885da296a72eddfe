"""A local stand-in for hashicorp/external (which cannot be downloaded here): its
`external` data source, served by PIM's own tfplugin6 server under dev_overrides.

It follows the documented program protocol: the program runs in working_dir with the
query as one JSON object of strings on stdin; its stdout must be one JSON object of
strings, which becomes `result`; a non-zero exit fails the read with its stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from pim.tofu.plugin.base import Attr, DataSource, Diag, Provider, Schema
from pim.tofu.plugin.server import serve


class External(DataSource):
    schema = Schema((
        Attr("program", ["list", "string"], "argv", required=True),
        Attr("query", ["map", "string"], "query", optional=True),
        Attr("working_dir", "string", "cwd", optional=True),
        Attr("id", "string", "id", computed=True),
        Attr("result", ["map", "string"], "result", computed=True),
    ))

    def read(self, config: dict[str, Any]) -> dict[str, Any]:
        proc = subprocess.run(config["program"], input=json.dumps(config.get("query") or {}),
                              capture_output=True, text=True, cwd=config.get("working_dir") or None)
        if proc.returncode != 0:
            raise Diag("External Program Execution Failed",
                       f"The data source received an unexpected error while attempting to execute the program.\n\n"
                       f"Program: {config['program'][0]}\nError Message: {proc.stderr.strip()}\n"
                       f"State: exit status {proc.returncode}")
        try:
            result = json.loads(proc.stdout)
        except ValueError as e:
            raise Diag("Unexpected External Program Results", f"not JSON: {e}") from None
        if not isinstance(result, dict) or not all(isinstance(v, str) for v in result.values()):
            raise Diag("Unexpected External Program Results", "the result must be a JSON object of strings")
        return config | {"id": "-", "result": result}


class ExternalProvider(Provider):
    data_sources = {"external": External()}


if __name__ == "__main__":
    sys.exit(serve(ExternalProvider()))
