"""A small TLS fake of the Proxmox VE API: only what `pim deploy` uses, with PVE's rules.

Why our own: the fakepve package refuses `content=import` uploads and reads upload
bodies into memory. Every request this fake serves is still checked against PVE's
published API schema (the API viewer's apidoc, as vendored by fakepve, PVE 9):
unknown parameters or malformed values end up in `schema_errors`, which tests
assert empty.

Facts of PVE this fake relies on (and so do the tests), each with where it comes from.
"apidoc" is PVE's API schema as vendored by fakepve (PVE 9); "pve-manager"/"pve-storage"/
"qemu-server" are PVE's own source packages; "Roadmap" is the release notes on PVE's wiki.
- GET /version answers {"version": "8.4.1", "release": "8.4", ...}; PVE 7 wrote "7.4-3"
  (pve-manager PVE/API2/Version.pm; both forms seen on real nodes).
- Upload content `import` takes `.qcow2`/`.raw`/`.vmdk` files from PVE 8.4 on; 8.2 and 8.3
  take only `.ova` there; before 8.2 the content enum is just iso and vztmpl (Roadmap 8.2:
  "import" content type for OVA; Roadmap 8.4: disk images as import content; pve-storage
  PVE/API2/Storage/Status.pm upload). The upload is a task (imgcopy) that checks `checksum`
  with `checksum-algorithm` and fails on a mismatch (apidoc: upload's parameters).
- `import-from` takes volumes of type `images`, or `import` from 8.4 on (an absolute path only
  from root@pam, never from an API token) (apidoc: import-from's description; qemu-server
  PVE/API2/Qemu.pm).
- Creating a VM at a taken VMID fails at once: 500 "VM <id> already exists on node '<node>'"
  (qemu-server PVE/API2/Qemu.pm create_vm).
- Errors carry their message in the HTTP reason phrase; bodies are {"data": null, ...}
  (pve-http-server PVE/APIServer/AnyEvent.pm; proxmoxer reads the reason).
- Long calls answer a UPID; GET /nodes/{node}/tasks/{upid}/status is "running" until the
  task ends, then "stopped" with exitstatus "OK" or the error; /log has the lines (apidoc:
  tasks/{upid}/status and /log).
- Auth with a token: `Authorization: PVEAPIToken=<user>@<realm>!<tokenid>=<secret>` (PVE
  wiki, "Proxmox VE API": API tokens).
- A cluster has several nodes; VMIDs are unique cluster-wide (nextid), a VM lives on one
  node and is reached only under /nodes/<its node>/qemu/<vmid>; a node the cluster does
  not have answers 500 "hostname lookup '<node>' failed - ..." (as fakepve's
  catalogue of PVE's error answers has it). A storage without the
  `shared` flag (dir, lvmthin) holds each node's own files; a shared one (cephfs, nfs)
  holds one set seen by all nodes. GET /nodes/<node>/storage lists them with `shared`
  (apidoc: storage index's returns; PVE admin guide, "Storage": shared flag).
- POST .../storage/<storage>/download-url (content `import`, PVE 8.4+, as for uploads) has
  the node fetch a URL itself, as a task that checks `checksum` and fails on a mismatch
  or an HTTP error (apidoc: download-url's parameters and permissions).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

TOKEN_ID, TOKEN_SECRET = "pim@pve!deploy", "fake-pve-token-secret-0123456789"


class _Request(Request):
    # PVE streams uploads of any size to a temporary file; so does werkzeug without these limits.
    max_form_memory_size = None
    max_content_length = None


class PveFail(Exception):
    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None):
        self.status, self.message, self.errors = status, message, errors
        super().__init__(message)


@dataclass
class Task:
    upid: str
    effect: Callable[[], None]
    fail: str | None
    polls_left: int
    log: list[str] = field(default_factory=list)
    exitstatus: str | None = None
    cleanup: Callable[[], Any] | None = None


def _version_tuple(text: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", text)
    assert m
    return int(m[1]), int(m[2])


class FakePve:
    def __init__(self, root: Path, version: str = "8.4.1", node: str = "pve", nodes: list[str] | None = None):
        self.nodes = list(nodes or [node])
        self.root, self.version, self.node = root, version, self.nodes[0]
        self.files_dir = root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.storages = {"local": {"type": "dir", "content": "iso,vztmpl,backup,import", "shared": 0},
                         "local-lvm": {"type": "lvmthin", "content": "images,rootdir", "shared": 0},
                         "cephfs": {"type": "cephfs", "content": "iso,vztmpl,import", "shared": 1}}
        # volid -> {path, size}: each node's own files on unshared storages, and one set on shared ones
        self.node_files: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in self.nodes}
        self.shared_files: dict[str, dict[str, Any]] = {}
        self.files = self.node_files[self.node]  # the first node's: what single-node tests look at
        self.vm_node: dict[int, str] = {}  # vmid -> the node it lives on
        self.disks: dict[str, int] = {}  # volid -> size
        self.vms: dict[int, dict[str, Any]] = {}  # vmid -> config (template: 1 when converted)
        self.tasks: dict[str, Task] = {}
        self.requests: list[tuple[str, str]] = []
        self.schema_errors: list[str] = []
        self.crashes: list[str] = []
        self.downloads: list[tuple[str, str]] = []  # (node, url) of each download-url
        self.fail_tasks: dict[str, str] = {}  # task type -> error message
        self.steal_vmids = 0  # nextid answers that another client takes at once
        self.task_polls = 2  # status polls before a task ends
        self.lock = threading.Lock()
        self._next_pid = 0x1000
        from fakepve import schema as pve_schema

        self._schema = pve_schema
        self._api = pve_schema.load()
        self.url = ""
        self._server: Any = None

    # ------------------------------------------------------------------ serving
    def start(self, certfile: str, keyfile: str) -> "FakePve":
        self._server = make_server("127.0.0.1", 0, self.wsgi, threaded=True, ssl_context=(certfile, keyfile))
        self.url = f"https://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True, name="pve-fake").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def wsgi(self, environ: dict, start_response: Callable) -> Any:
        request = _Request(environ)
        try:
            response = self._dispatch(request)
        except PveFail as e:
            body = {"data": None, "message": e.message + "\n"}
            if e.errors:
                body["errors"] = e.errors
            reason = e.message.splitlines()[0][:200]
            response = Response(json.dumps(body), status=f"{e.status} {reason}", mimetype="application/json")
        except Exception as e:  # a bug in the fake: keep it visible to the test
            import traceback

            self.crashes.append(traceback.format_exc())
            response = Response("{}", status=f"599 fake crashed: {e.__class__.__name__}")
        return response(environ, start_response)

    _routes = Map([
        Rule("/api2/json/version", endpoint="version", methods=["GET"]),
        Rule("/api2/json/cluster/nextid", endpoint="nextid", methods=["GET"]),
        Rule("/api2/json/nodes/<node>/storage", endpoint="storage_list", methods=["GET"]),
        Rule("/api2/json/nodes/<node>/storage/<storage>/content", endpoint="content", methods=["GET"]),
        Rule("/api2/json/nodes/<node>/storage/<storage>/download-url", endpoint="download_url", methods=["POST"]),
        Rule("/api2/json/nodes/<node>/storage/<storage>/content/<path:volume>", endpoint="content_delete",
             methods=["DELETE"]),
        Rule("/api2/json/nodes/<node>/storage/<storage>/upload", endpoint="upload", methods=["POST"]),
        Rule("/api2/json/nodes/<node>/qemu", endpoint="qemu_list", methods=["GET"]),
        Rule("/api2/json/nodes/<node>/qemu", endpoint="qemu_create", methods=["POST"]),
        Rule("/api2/json/nodes/<node>/qemu/<int:vmid>", endpoint="qemu_destroy", methods=["DELETE"]),
        Rule("/api2/json/nodes/<node>/qemu/<int:vmid>/config", endpoint="config_get", methods=["GET"]),
        Rule("/api2/json/nodes/<node>/qemu/<int:vmid>/config", endpoint="config_set", methods=["POST"]),
        Rule("/api2/json/nodes/<node>/qemu/<int:vmid>/template", endpoint="template", methods=["POST"]),
        Rule("/api2/json/nodes/<node>/tasks/<upid>/status", endpoint="task_status", methods=["GET"]),
        Rule("/api2/json/nodes/<node>/tasks/<upid>/log", endpoint="task_log", methods=["GET"]),
    ])

    def _dispatch(self, request: Request) -> Response:
        if request.headers.get("Authorization", "") != f"PVEAPIToken={TOKEN_ID}={TOKEN_SECRET}":
            raise PveFail(401, "authentication failure")
        try:
            endpoint, args = self._routes.bind_to_environ(request.environ).match()
        except Exception:
            raise PveFail(501, f"Method '{request.method} {request.path}' not implemented") from None
        params = dict(request.args.items())
        if request.method in ("POST", "PUT"):
            params.update(request.form.items())
        self.requests.append((request.method, request.path))
        self._check_schema(request, args, params)
        if "node" in args and args["node"] not in self.nodes:
            node = args["node"]
            raise PveFail(500, f"hostname lookup '{node}' failed - failed to get address info for: {node}: "
                               "Name or service not known")
        with self.lock:
            data = getattr(self, f"_{endpoint}")(request, params, **args)
        return Response(json.dumps({"data": data}), mimetype="application/json")

    def _check_schema(self, request: Request, args: dict[str, Any], params: dict[str, Any]) -> None:
        path = request.path.removeprefix("/api2/json")
        match = self._api.match(path if "volume" not in args else path.split("/content/")[0] + "/content/x")
        if match is None or request.method not in match.methods:
            self.schema_errors.append(f"{request.method} {path}: not in PVE's API")
            return
        values = {**match.params, **{k: v for k, v in args.items() if k in match.params}, **params}
        if "volume" in args:
            values["volume"] = args["volume"]
        _, errors = self._schema.validate(match.methods[request.method].get("parameters"), values)
        for name, message in errors.items():
            self.schema_errors.append(f"{request.method} {match.template} {name}: {message.strip()}")
        if errors:
            raise PveFail(400, "Parameter verification failed.", {k: v.strip() for k, v in errors.items()})

    # ------------------------------------------------------------------ tasks
    def _task(self, kind: str, ident: str, effect: Callable[[], None], log: list[str] | None = None,
              node: str | None = None) -> str:
        self._next_pid += 1
        upid = f"UPID:{node or self.node}:{self._next_pid:08X}:00ABCDEF:{int(time.time()):08X}:{kind}:{ident}:{TOKEN_ID}:"
        self.tasks[upid] = Task(upid, effect, self.fail_tasks.get(kind), self.task_polls, list(log or []))
        return upid

    def _task_status(self, request: Request, params: dict, node: str, upid: str) -> dict[str, Any]:
        task = self.tasks.get(upid)
        if task is None:
            raise PveFail(500, f"no such task '{upid}'")
        if task.exitstatus is None:
            task.polls_left -= 1
            if task.polls_left <= 0:
                if task.fail:
                    task.log.append(f"TASK ERROR: {task.fail}")
                    task.exitstatus = task.fail
                    if task.cleanup:
                        task.cleanup()
                else:
                    try:
                        task.effect()
                        task.log.append("TASK OK")
                        task.exitstatus = "OK"
                    except PveFail as e:
                        task.log.append(f"TASK ERROR: {e.message}")
                        task.exitstatus = e.message
        kind = upid.split(":")[5]
        status = {"upid": upid, "node": node, "pid": 1, "pstart": 1, "starttime": 1, "type": kind, "id": "",
                  "user": TOKEN_ID, "status": "running" if task.exitstatus is None else "stopped"}
        if task.exitstatus is not None:
            status["exitstatus"] = task.exitstatus
        return status

    def _task_log(self, request: Request, params: dict, node: str, upid: str) -> list[dict[str, Any]]:
        task = self.tasks[upid]
        return [{"n": i + 1, "t": line} for i, line in enumerate(task.log)]

    # ------------------------------------------------------------------ cluster
    def _version(self, request: Request, params: dict) -> dict[str, Any]:
        major, minor = _version_tuple(self.version)
        return {"version": self.version, "release": f"{major}.{minor}", "repoid": "0123abcd"}

    def _nextid(self, request: Request, params: dict) -> int:
        if "vmid" in params:
            vmid = int(params["vmid"])
            if vmid in self.vms:
                raise PveFail(400, f"VM {vmid} already exists", {"vmid": f"VM {vmid} already exists"})
            return vmid
        vmid = 100
        while vmid in self.vms:
            vmid += 1
        if self.steal_vmids > 0:  # another client creates this VMID right after we hear of it
            self.steal_vmids -= 1
            self.vms[vmid] = {"name": "someone-else", "template": 0}
        return vmid

    # ------------------------------------------------------------------ storage
    def files_on(self, node: str, storage: str) -> dict[str, dict[str, Any]]:
        """The files `node` sees on `storage`: its own, or the cluster's on a shared storage."""
        return self.shared_files if self.storages[storage]["shared"] else self.node_files[node]

    def _storage_list(self, request: Request, params: dict, node: str) -> list[dict[str, Any]]:
        return [{"storage": name, "type": s["type"], "content": s["content"], "shared": s["shared"], "active": 1,
                 "enabled": 1} for name, s in self.storages.items() if params.get("storage") in (None, name)]

    def _content(self, request: Request, params: dict, node: str, storage: str) -> list[dict[str, Any]]:
        out = [{"volid": volid, "size": f["size"], "format": "qcow2", "content": "import", "ctime": 1}
               for volid, f in self.files_on(node, storage).items() if volid.startswith(f"{storage}:")]
        want = params.get("content")
        return [o for o in out if not want or o["content"] == want]

    def _content_delete(self, request: Request, params: dict, node: str, storage: str, volume: str) -> str:
        volid = urllib.parse.unquote(volume)
        files = self.files_on(node, storage)
        if volid not in files:
            raise PveFail(500, f"volume '{volid}' does not exist")

        def effect() -> None:
            Path(files.pop(volid)["path"]).unlink(missing_ok=True)
        return self._task("imgdel", "", effect, node=node)  # PVE forks this worker with no id

    def _upload(self, request: Request, params: dict, node: str, storage: str) -> str:
        content, name = params.get("content", ""), params.get("filename", "")
        upload = request.files.get("filename") or next(iter(request.files.values()), None)
        if upload is None:
            raise PveFail(400, "missing file")
        self._content_rules(storage, content, name)
        tmp = self.root / f"pveupload-{os.getpid()}-{len(self.tasks)}"
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            while chunk := upload.stream.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        return self._import_task(node, storage, content, name, tmp, digest.hexdigest(), params.get("checksum"),
                                 [f"starting file import from: {tmp}"])

    def _download_url(self, request: Request, params: dict, node: str, storage: str) -> str:
        import urllib.request

        content, name, url = params.get("content", ""), params.get("filename", ""), params.get("url", "")
        self._content_rules(storage, content, name)
        tmp = self.root / f"pvedownload-{os.getpid()}-{len(self.tasks)}"
        digest, log = hashlib.sha256(), [f"downloading {url} to {tmp}"]
        self.downloads.append((node, url))
        try:
            with urllib.request.urlopen(url, timeout=10) as response, open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            return self._failed_task("download", f"download failed: {e}", log, node)
        return self._import_task(node, storage, content, name, tmp, digest.hexdigest(), params.get("checksum"), log,
                                 kind="download")

    def _content_rules(self, storage: str, content: str, name: str) -> None:
        version = _version_tuple(self.version)
        if content == "import":
            if version < (8, 2):
                raise PveFail(400, "Parameter verification failed.",
                              {"content": "value 'import' does not have a value in the enumeration 'iso, vztmpl'"})
            allowed = r"\.(ova|qcow2|raw|vmdk)$" if version >= (8, 4) else r"\.ova$"
            if not re.search(allowed, name):
                raise PveFail(400, "Parameter verification failed.",
                              {"filename": "invalid filename or wrong extension"})
        if content not in self.storages[storage]["content"].split(","):
            raise PveFail(500, f"storage '{storage}' does not support '{content}' content")

    def _import_task(self, node: str, storage: str, content: str, name: str, tmp: Path, got: str,
                     expected: str | None, log: list[str], kind: str = "imgcopy") -> str:
        volid = f"{storage}:{content}/{name}"
        log = [*log, f"target file: {volid}"]
        if expected and expected != got:
            tmp.unlink()
            return self._failed_task(kind, f"checksum mismatch: got '{got}' != expect '{expected}'", log, node)
        files = self.files_on(node, storage)

        def effect() -> None:
            dest = self.files_dir / f"{node if files is not self.shared_files else 'shared'}-{name}"
            shutil.move(tmp, dest)
            files[volid] = {"path": str(dest), "size": dest.stat().st_size}
        return self._task(kind, "", effect, log, node=node)

    def _failed_task(self, kind: str, message: str, log: list[str], node: str | None = None) -> str:
        upid = self._task(kind, "", lambda: None, log, node=node)
        self.tasks[upid].fail = message
        return upid

    # ------------------------------------------------------------------ qemu
    def _qemu_list(self, request: Request, params: dict, node: str) -> list[dict[str, Any]]:
        out = []
        for vmid, cfg in sorted(self.vms.items()):
            if self.vm_node.get(vmid, self.node) != node:
                continue
            item = {"vmid": vmid, "name": cfg.get("name", ""), "status": "stopped"}
            if cfg.get("tags"):
                item["tags"] = cfg["tags"]
            if cfg.get("template"):
                item["template"] = 1
            out.append(item)
        return out

    def _qemu_create(self, request: Request, params: dict, node: str) -> str:
        vmid = int(params["vmid"])
        if vmid in self.vms:
            raise PveFail(500, f"VM {vmid} already exists on node '{node}'")
        config = {k: v for k, v in params.items() if k != "vmid"}
        version = _version_tuple(self.version)
        log = [f"create VM {vmid}"]
        for key, value in list(config.items()):
            m = re.match(r"^([\w-]+):0,import-from=([^,]+)(.*)$", str(value))
            if not m:
                continue
            source = m[2]
            if source.startswith("/"):
                raise PveFail(403, "only root can pass arbitrary filesystem paths")
            vtype = source.split(":", 1)[1].split("/", 1)[0] if ":" in source else ""
            if vtype == "import" and version < (8, 4) or vtype not in ("images", "import"):
                raise PveFail(400, "Parameter verification failed.",
                              {key: f"{source} has wrong type '{vtype}' - not an image"})
            files = self.files_on(node, source.split(":", 1)[0]) if source.split(":", 1)[0] in self.storages else {}
            if source not in files:
                raise PveFail(500, f"volume '{source}' does not exist")
            disk = f"{m[1]}:vm-{vmid}-disk-0"
            self.disks[disk] = files[source]["size"]
            config[key] = disk + m[3]
            log.append(f"importing disk '{source}' to VM {vmid} ...")
        self.vms[vmid] = {"creating": True}
        self.vm_node[vmid] = node

        def effect() -> None:
            self.vms[vmid] = config

        upid = self._task("qmcreate", str(vmid), effect, log, node=node)
        made = [str(v).split(",")[0] for v in config.values() if str(v).startswith(f"local-lvm:vm-{vmid}-")]

        def cleanup() -> None:  # PVE removes what a failed create made
            self.vms.pop(vmid, None)
            self.vm_node.pop(vmid, None)
            for disk in made:
                self.disks.pop(disk, None)
        self.tasks[upid].cleanup = cleanup
        return upid

    def _vm(self, vmid: int, node: str | None = None) -> dict[str, Any]:
        node = node or self.node
        if vmid not in self.vms or self.vm_node.get(vmid, self.node) != node:
            raise PveFail(500, f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist")
        return self.vms[vmid]

    def _qemu_destroy(self, request: Request, params: dict, node: str, vmid: int) -> str:
        config = self._vm(vmid, node)

        def effect() -> None:
            for value in config.values():
                disk = str(value).split(",")[0]
                self.disks.pop(disk, None)
            self.vms.pop(vmid, None)
            self.vm_node.pop(vmid, None)
        return self._task("qmdestroy", str(vmid), effect, node=node)

    def _config_get(self, request: Request, params: dict, node: str, vmid: int) -> dict[str, Any]:
        return {k: v for k, v in self._vm(vmid, node).items() if k != "creating"}

    def _config_set(self, request: Request, params: dict, node: str, vmid: int) -> str:
        config = self._vm(vmid, node)

        def effect() -> None:
            for key, value in params.items():
                volume = str(value).split(",")[0]
                for unused in [k for k, v in config.items() if k.startswith("unused") and v == volume]:
                    del config[unused]
                config[key] = value
        return self._task("qmconfig", str(vmid), effect, node=node)

    def _template(self, request: Request, params: dict, node: str, vmid: int) -> str:
        config = self._vm(vmid, node)
        if config.get("template"):
            raise PveFail(500, f"VM {vmid} is already a template")

        def effect() -> None:
            config["template"] = 1
        return self._task("qmtemplate", str(vmid), effect, node=node)

    # ------------------------------------------------------------------ the node's shell (fallback)
    def import_disk(self, vmid: int, path: Path, storage: str) -> str:
        """What `qm importdisk` does to the VM: a new disk, listed as unusedN."""
        with self.lock:
            config = self._vm(vmid)
            n = sum(1 for k in config if k.startswith("unused"))
            disk = f"{storage}:vm-{vmid}-disk-{n}"
            self.disks[disk] = path.stat().st_size
            config[f"unused{n}"] = disk
        return f"importing disk '{path}' to VM {vmid} ...\nSuccessfully imported disk as 'unused{n}:{disk}'\n"

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))
