"""Read an installer ISO: its volume id, whether a file exists, a file's bytes.

One reader for layout detection (pim.engine.installers.layouts) and for kernel and
initrd extraction, so that what detection finds, extraction can read. A path is
what users see (`/install.amd/vmlinuz`, `/.treeinfo`); it is looked up as a Rock
Ridge name, then a Joliet name, then as a plain ISO 9660 name, where names are
upper case with a version (`VMLINUZ.;1`) and, on level-1 images, cut to 8.3
(`_TREEINF.;1` for `.treeinfo`).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import TracebackType

from pim.engine.errors import InputError


class IsoImage:
    """An open ISO 9660 image; use as a context manager (closed on exit).

    Raises InputError when the file is not a readable ISO 9660 image.
    """

    def __init__(self, path: Path):
        import pycdlib
        from pycdlib.pycdlibexception import PyCdlibException

        self.path = path
        self._cd = pycdlib.PyCdlib()
        try:
            self._cd.open(str(path))
        except (PyCdlibException, OSError) as e:
            raise InputError(f"{path} is not a readable ISO 9660 image: {e}") from None
        self.volume_id = self._cd.pvd.volume_identifier.decode("ascii", "replace").strip()

    def __enter__(self) -> "IsoImage":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._cd.close()

    def exists(self, path: str) -> bool:
        """Whether `path` (absolute, as users see it) names a file or folder on the image."""
        return self._locate(path) is not None

    def read(self, path: str) -> bytes:
        """The bytes of a (small) file; InputError naming the image if it has none at `path`."""
        out = io.BytesIO()
        self._cd.get_file_from_iso_fp(out, **self._require(path))
        return out.getvalue()

    def extract(self, path: str, dest: Path) -> None:
        """Copy the file at `path` to `dest` (written as `dest.part`, then renamed)."""
        facet = self._require(path)
        tmp = dest.with_name(dest.name + ".part")
        try:
            self._cd.get_file_from_iso(str(tmp), **facet)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dest)

    def _require(self, path: str) -> dict[str, str]:
        facet = self._locate(path)
        if facet is None:
            raise InputError(f"{path} not found in {self.path.name}; set installer.boot.kernel/initrd "
                             "to the paths the ISO really has")
        return facet

    def _locate(self, path: str) -> dict[str, str] | None:
        from pycdlib.pycdlibexception import PyCdlibException

        facets = []
        if self._cd.has_rock_ridge():
            facets.append({"rr_path": path})
        if self._cd.has_joliet():
            facets.append({"joliet_path": path})
        for facet in facets:
            try:
                self._cd.get_record(**facet)
                return facet
            except PyCdlibException:
                continue
        iso_path = self._iso9660_path(path)
        return {"iso_path": iso_path} if iso_path else None

    def _iso9660_path(self, path: str) -> str | None:
        """The plain ISO 9660 name of `path`, found by walking its folders."""
        from pycdlib.pycdlibexception import PyCdlibException

        current = "/"
        for part in [p for p in path.split("/") if p]:
            wanted = {_plain(part), _level1(part)}
            try:
                children = list(self._cd.list_children(iso_path=current))
            except PyCdlibException:
                return None
            for child in children:
                name = child.file_identifier().decode("ascii", "replace")
                if name in (".", "..", "\x00", "\x01") or child.is_dot() or child.is_dotdot():
                    continue
                if _plain(name) in wanted:
                    current = current.rstrip("/") + "/" + name
                    break
            else:
                return None
        return current


def _plain(name: str) -> str:
    """A name without version and trailing dot, upper case: `VMLINUZ.;1` -> `VMLINUZ`."""
    return name.split(";", 1)[0].rstrip(".").upper()


def _level1(name: str) -> str:
    """How an ISO 9660 level-1 writer spells a name: d-characters only, 8.3."""
    mangled = re.sub(r"[^A-Z0-9_.]", "_", name.upper())
    mangled = "_" + mangled[1:] if mangled.startswith(".") else mangled
    base, dot, ext = mangled.rpartition(".")
    if not dot:
        base, ext = mangled, ""
    base, ext = base.replace(".", "_")[:8], ext[:3]
    return f"{base}.{ext}".rstrip(".")


def extract(iso: Path, members: dict[str, Path]) -> None:
    """Copy ISO members (absolute paths as users see them) to local files.

    Raises InputError for an unreadable image or a member it does not have.
    """
    with IsoImage(iso) as image:
        for member, dest in members.items():
            image.extract(member, dest)


def read_text(iso: Path, member: str) -> str | None:
    """A small text file from the image (e.g. `/.treeinfo`), None if the image has none."""
    with IsoImage(iso) as image:
        return image.read(member).decode("utf-8", "replace") if image.exists(member) else None
