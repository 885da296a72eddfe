"""The pim.yaml model: what an image is made of, validated all at once.

Every problem is reported with its dotted path and the rule it broke; unknown keys
are errors. File references are relative to the config file's folder.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from pim.engine.deploy.spec import TargetSpec
from pim.engine.errors import Problem, SpecError
from pim.engine.config.units import parse_duration, parse_size

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "examples": ["8G", "512M"]}]}),
]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "examples": ["30m", "90s"]}]}),
]


class Arch(StrEnum):
    x86_64 = "x86_64"
    aarch64 = "aarch64"


class Firmware(StrEnum):
    bios = "bios"
    uefi = "uefi"


class Accel(StrEnum):
    auto = "auto"
    kvm = "kvm"
    hvf = "hvf"
    tcg = "tcg"


class Family(StrEnum):
    custom = "custom"  # the user's own answer-file template and boot parameters
    debian = "debian"  # debian-installer, preseed over HTTP
    ubuntu = "ubuntu"  # subiquity autoinstall through a NoCloud seed over HTTP
    kickstart = "kickstart"  # anaconda (Rocky, Alma, Fedora, RHEL), inst.ks=


class Compression(StrEnum):
    auto = "auto"  # zstd where the host's qemu-img has it, else zlib
    zstd = "zstd"
    zlib = "zlib"
    none = "none"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_file(value: str | None, info: ValidationInfo) -> str | None:
    """A referenced local file must exist (relative paths are from the config's folder)."""
    if value is None:
        return value
    base = Path((info.context or {}).get("base_dir", "."))
    path = base / value
    if not path.is_file():
        raise ValueError(f"file {value!r} does not exist (looked for {path})")
    return value


class Source(_Model):
    iso: str = Field(description="Installer ISO: a local path or an http(s) URL")
    sha256: str | None = Field(None, description="Expected sha256 of the ISO (required for URLs)")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError(f"{v!r} is not a sha256: 64 hexadecimal digits expected")
        return v.lower() if v else v

    @model_validator(mode="after")
    def _url_needs_checksum(self, info: ValidationInfo) -> "Source":
        if self.is_url:
            if self.sha256 is None:
                raise ValueError("sha256 is required when iso is a URL: an unverified download is never used")
        else:
            _check_file(self.iso, info)
        return self

    @property
    def is_url(self) -> bool:
        return self.iso.startswith(("http://", "https://"))


class Boot(_Model):
    kernel: str | None = Field(None, description="Kernel path inside the ISO, e.g. /install.amd/vmlinuz")
    initrd: str | None = Field(None, description="Initrd path inside the ISO")
    params: str = Field("", description="Kernel command line (Jinja2; {{ answer_url }} is the answer file's URL)")
    command: list[str] | None = Field(
        None, description="Typed boot command for media that cannot be booted directly (QMP send-key)"
    )
    command_delay: Duration = Field(10.0, description="Wait this long after power-on before typing the command")

    @model_validator(mode="after")
    def _one_way(self) -> "Boot":
        if (self.kernel is None) != (self.initrd is None):
            raise ValueError("give both kernel and initrd for direct kernel boot, or neither")
        if self.kernel is None and self.command is None:
            raise ValueError("set kernel+initrd (direct kernel boot) or command (typed boot command)")
        return self


class Installer(_Model):
    family: Family = Family.custom
    template: str | None = Field(
        None, description="Answer-file template (Jinja2), relative to the config file; replaces the family's built-in"
    )
    answer_file: str | None = Field(
        None, description="Answer file served byte for byte (never rendered), relative to the config file; "
                          "replaces the family's built-in; the alternative to template")
    answer_name: str = Field("answer", pattern=r"^[A-Za-z0-9._-]+$",
                             description="File name a custom answer file is served under")
    files: dict[str, str] = Field({}, description="Extra files served byte for byte beside the answer file: "
                                                  "name -> local path")
    template_files: dict[str, str] = Field({}, description="Extra files rendered as Jinja2 templates like the "
                                                           "answer template, then served: name -> local path")
    vars: dict[str, str] = Field({}, description="Extra template variables")
    mirror: str | None = Field(None, description="Package mirror URL for the installer (default: the installer's own)")
    locale: str | None = Field(None, description="e.g. en_US.UTF-8")
    timezone: str | None = Field(None, description="e.g. UTC, Europe/Paris")
    keyboard: str | None = Field(None, description="XKB layout, e.g. us")
    boot: Boot | None = Field(None, description="Boot method; default: detected from the ISO for the built-in families")
    timeout: Duration = Field(3600.0, description="Deadline for the whole install")
    kickstart_version: str | None = Field(
        None, description="Kickstart syntax version `pim validate` checks with (pykickstart's names: RHEL8, RHEL10, "
                          "F40); default: from the ISO's .treeinfo, else RHEL9")
    failure_patterns: list[str] = Field([], description="Extra regexes that fail the install when seen on the console or in the installer's log stream")

    _template = field_validator("template", "answer_file")(_check_file)

    @field_validator("files", "template_files")
    @classmethod
    def _files_exist(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for name, path in v.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
                raise ValueError(f"file name {name!r} may only contain letters, digits, '.', '_' and '-'")
            _check_file(path, info)
        return v

    @model_validator(mode="after")
    def _custom_needs_everything(self) -> "Installer":
        if self.template is not None and self.answer_file is not None:
            raise ValueError("give template (rendered) or answer_file (served as it is), not both")
        if self.family == Family.custom and ((self.template is None and self.answer_file is None)
                                             or self.boot is None):
            raise ValueError("family custom needs template (or answer_file) and boot; or use a built-in family "
                             "(debian, ubuntu, kickstart)")
        both = sorted(set(self.files) & set(self.template_files))
        if both:
            raise ValueError(f"{', '.join(both)}: in both files and template_files; keep each name in one")
        return self

    @field_validator("failure_patterns")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {e}") from None
        return v


class SSH(_Model):
    user: str = "root"
    password: SecretStr | None = Field(None, description="Only if the answer file sets one; PIM's build key is used first")
    timeout: Duration = Field(900.0, description="How long to wait for SSH after the install")


class ShellStep(_Model):
    type: Literal["shell"]
    name: str | None = None
    inline: str | None = None
    script: str | None = None
    env: dict[str, str] = {}
    expect_disconnect: bool = Field(False, description="The script reboots the guest; wait for SSH again")

    _script = field_validator("script")(_check_file)

    @model_validator(mode="after")
    def _exactly_one(self) -> "ShellStep":
        if (self.inline is None) == (self.script is None):
            raise ValueError("give exactly one of inline or script")
        return self

    @property
    def label(self) -> str:
        return self.name or (Path(self.script).name if self.script else "inline")


class FileStep(_Model):
    type: Literal["file"]
    source: str
    destination: str = Field(pattern=r"^/", description="Absolute path in the guest")
    mode: str = Field("0644", pattern=r"^0?[0-7]{3,4}$")

    _source = field_validator("source")(_check_file)

    @property
    def label(self) -> str:
        return f"upload {self.destination}"


Step = Annotated[Union[ShellStep, FileStep], Field(discriminator="type")]


class Finalize(_Model):
    cloud_init: bool = Field(True, description="Install cloud-init when absent, then clean it")
    trim: bool = Field(True, description="fstrim free space before compressing")


class Output(_Model):
    compression: Compression = Compression.auto


class ImageSpec(_Model):
    source: Source
    arch: Arch = Arch.x86_64
    disk_size: Size = Field(8 << 30, ge=1 << 30, description="Virtual disk size, at least 1G")
    cpus: int = Field(2, ge=1, le=64)
    memory: Size = Field(2 << 30, ge=256 << 20, description="Guest memory, at least 256M")
    firmware: Firmware = Firmware.bios
    accel: Accel = Accel.auto
    installer: Installer
    ssh: SSH = SSH()
    env: dict[str, str] = Field({}, description="Environment for every shell step")
    provision: list[Step] = []
    snapshot: bool = Field(True, description="Save the booted guest after install so provisioning resumes it "
                                             "in seconds instead of booting (a pure speed-up)")
    finalize: Finalize = Finalize()
    output: Output = Output()


class Config(_Model):
    images: dict[Annotated[str, Field(pattern=NAME_RE)], ImageSpec] = Field(min_length=1)
    targets: dict[Annotated[str, Field(pattern=NAME_RE)], TargetSpec] = Field({}, description="Where `pim deploy` puts images")
    _base_dir: Path = PrivateAttr(default=Path("."))

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def path(self, relative: str) -> Path:
        """A file the config refers to, resolved against the config's folder."""
        return (self._base_dir / relative).resolve()

    def image(self, name: str) -> ImageSpec:
        try:
            return self.images[name]
        except KeyError:
            known = ", ".join(sorted(self.images)) or "none"
            raise SpecError("config", [Problem(f"images.{name}", f"no such image; defined: {known}")]) from None


def _problems(err: ValidationError) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("shell", "file"))
        if e["type"] == "extra_forbidden":
            msg = "unknown key (see `pim schema` for the allowed keys)"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] not in ("missing", "value_error") and "input" in e:
                msg += f" (got {e['input']!r})"
        out.append(Problem(loc, msg))
    return out


def parse_config(data: Any, base_dir: Path, source: str = "config") -> Config:
    """Validate already-loaded data; raises SpecError listing every problem."""
    if not isinstance(data, dict):
        raise SpecError(source, [Problem("", "the config must be a mapping with an 'images' key")])
    try:
        cfg = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        raise SpecError(source, _problems(e)) from None
    cfg._base_dir = base_dir.resolve()
    return cfg


def load_config(path: Path) -> Config:
    """Read and check a pim.yaml: every image and target, every problem at once.

    Relative paths inside it are resolved against the file's folder (`Config.base_dir`).
    Raises SpecError listing each problem with its dotted path (`images.web.disk_size`)
    and the rule it broke, for an unreadable file, bad YAML or an invalid value.
    """
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(str(path), [Problem("", f"cannot read the config: {e.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(str(path), [Problem(where, f"not valid YAML: {getattr(e, 'problem', e)}")]) from None
    return parse_config(data, path.parent, str(path))


def json_schema() -> dict[str, Any]:
    return Config.model_json_schema()
