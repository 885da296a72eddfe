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

from pim.engine.builders.spec import BuilderSpec
from pim.engine.deploy.spec import TargetSpec
from pim.engine.remote.spec import CacheSpec
from pim.engine.errors import Problem, SpecError
from pim.engine.config.units import Duration, GuestPath, Size, matching

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# A name the answer server serves a file under: one URL path segment, never "." or "..".
SERVED_NAME_RE = r"^(?!\.{1,2}$)[A-Za-z0-9._-]+$"
_SERVED_NAME_RULE = "letters, digits, '.', '_' and '-', and not '.' or '..'"
_ServedName = matching(SERVED_NAME_RE, f"it is served as one URL path segment: {_SERVED_NAME_RULE}", "preseed.cfg")


def _file_mode(value: object) -> str:
    """A permission mode as chmod(1) reads an octal one: octal digits worth at most 07777.

    GNU chmod takes any count of octal digits (mode_compile in gnulib's modechange.c,
    "a numeric mode is from one to four octal digits"; leading zeros are allowed). An
    integer from YAML is read the same way, so `mode: 600` and `mode: 0600` are both
    rw-------. Returns four digits ("0600") so equal modes give equal cache keys.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a file mode: write octal digits as chmod takes them, e.g. '0644'")
    text = str(value).strip()
    if not re.fullmatch(r"[0-7]+", text) or int(text, 8) > 0o7777:
        hint = " (YAML reads 0o600 as the number 384: write 0600 or '0600')" if isinstance(value, int) else ""
        raise ValueError(f"{value!r} is not a file mode: write up to four octal digits (0-7) as chmod takes "
                         f"them, e.g. '0644' or '0755'{hint}")
    return f"{int(text, 8):04o}"


FileMode = Annotated[str, BeforeValidator(_file_mode),
                     WithJsonSchema({"anyOf": [{"type": "string", "pattern": "^[0-7]+$"}, {"type": "integer"}],
                                     "examples": ["0644", "0755"]})]


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


_MAX_CPUS = {Arch.x86_64: 1024, Arch.aarch64: 512}
_MACHINE_NAME = {Arch.x86_64: "q35", Arch.aarch64: "virt"}


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
    answer_name: _ServedName = Field("answer", description="File name a custom answer file is served under")
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
    timeout: Duration = Field(3600.0, gt=0, description="Deadline for the whole install")
    kickstart_version: str | None = Field(
        None, description="Kickstart syntax version `pim validate` checks with (pykickstart's names: RHEL8, RHEL10, "
                          "F40); default: from the ISO's .treeinfo, else RHEL9; `pim validate` checks "
                          "the name with pykickstart's makeVersion")
    failure_patterns: list[str] = Field([], description="Extra regexes that fail the install when seen on the console or in the installer's log stream")

    _template = field_validator("template", "answer_file")(_check_file)

    @field_validator("files", "template_files")
    @classmethod
    def _files_exist(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for name, path in v.items():
            if not re.fullmatch(SERVED_NAME_RE, name):
                raise ValueError(f"file name {name!r} is served as one URL path segment: use only "
                                 f"{_SERVED_NAME_RULE}")
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
    timeout: Duration = Field(900.0, gt=0, description="How long to wait for SSH after the install")


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
    destination: GuestPath = Field(description="Absolute path in the guest; the file is written as root (through sudo for another ssh.user), whole or not at all")
    mode: FileMode = Field("0644", description="Octal permissions as chmod takes them")

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
    cpus: int = Field(2, ge=1, description="Virtual CPUs (QEMU's -smp): at most 1024 on x86_64 (q35), 512 on "
                                         "aarch64 (virt)")
    memory: Size = Field(2 << 30, ge=256 << 20, description="Guest memory, at least 256M, in whole MiB")
    firmware: Firmware = Field(Firmware.bios, description="bios or uefi; aarch64 images are always uefi")
    accel: Accel = Accel.auto
    installer: Installer
    ssh: SSH = SSH()
    env: dict[str, str] = Field({}, description="Environment for every shell step")
    provision: list[Step] = []
    snapshot: bool = Field(True, description="Save the booted guest after install so provisioning resumes it "
                                             "in seconds instead of booting (a pure speed-up)")
    finalize: Finalize = Finalize()
    output: Output = Output()
    builder: str | None = Field(None, description="Build on this builder (a name under builders:, or local) "
                                                  "instead of where routing sends it")

    @model_validator(mode="before")
    @classmethod
    def _one_firmware(cls, data: Any) -> Any:
        """The firmware is decided here, once: aarch64 machines (QEMU's virt, EC2's
        Graviton, Proxmox's aarch64 VMs) boot only UEFI, so an aarch64 image is UEFI
        whether or not it says so, and `firmware: bios` with it is a contradiction.
        Templates, every QEMU of the build, stage keys, manifest and deploy read this
        one value."""
        if isinstance(data, dict) and str(data.get("arch", "")) == Arch.aarch64.value:
            if str(data.get("firmware", Firmware.uefi.value)) != Firmware.uefi.value:
                raise ValueError(f"firmware: {data.get('firmware')} with arch: aarch64: arm64 machines boot only UEFI; "
                                 "remove firmware or set firmware: uefi")
            data = {**data, "firmware": Firmware.uefi.value}
        return data

    @model_validator(mode="after")
    def _cpus_the_machine_takes(self) -> "ImageSpec":
        # The machine type's max_cpus in QEMU: q35 1024 since QEMU 8.1 (288 before; an
        # older QEMU says so itself at start), hw/i386/pc_q35.c; virt 512, hw/arm/virt.c.
        limit = _MAX_CPUS[self.arch]
        if self.cpus > limit:
            raise ValueError(f"cpus {self.cpus} is more than QEMU's {_MACHINE_NAME[self.arch]} machine takes for "
                             f"{self.arch}: use at most {limit}")
        return self

    @field_validator("memory")
    @classmethod
    def _whole_mib(cls, v: int) -> int:
        # QEMU is given -m in MiB; a remainder would be dropped without a word.
        if v % (1 << 20):
            raise ValueError(f"memory {v} bytes is not a whole number of MiB: write e.g. '{v >> 20}M'")
        return v


_Name = matching(NAME_RE, "a name is 1 to 63 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
                 "web-server")


class Config(_Model):
    images: dict[_Name, ImageSpec] = Field(min_length=1)
    targets: dict[_Name, TargetSpec] = Field({}, description="Where `pim deploy` puts images")
    cache: CacheSpec | None = Field(None, description="A shared build cache in S3-compatible storage")
    builders: dict[_Name, BuilderSpec] = Field({}, description="Machines that build, reached over SSH; `local` "
                                                               "is this one")
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


class _Loader(yaml.SafeLoader):
    """YAML 1.2's core schema on PyYAML's safe loader, and no duplicate keys.

    PyYAML resolves YAML 1.1 (yaml.org/type/bool.html, int.html): `keyboard: no` loads
    as False, `mode: 0600` as 384 and `timeout: 1:30` as 90. YAML 1.2.2 (section 10.3.2,
    the core schema) keeps only true/false as booleans, reads 0600 as decimal and 0o600
    as octal, and has no base-60 numbers; everything else stays text, which the model
    then reads for what the field is (pydantic takes "yes"/"no"/"on"/"off" for a boolean).
    A key given twice in one mapping is an error (YAML 1.2.2 section 3.2.1.1: keys are
    unique), where PyYAML would silently keep the last.
    """

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first}): YAML keeps only one value for a "
                                "key; remove or merge one of them", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        if text.startswith(("0o", "+0o", "-0o")):
            return int(text.replace("0o", "", 1), 8)
        return int(text, 16 if "0x" in text else 10)


for _first, _tag, _regexp in [
    ("tTfF", "tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$"),
    ("-+0123456789", "tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    ("-+.0123456789", "tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    ("~nN", "tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL)$"),
    ("", "tag:yaml.org,2002:null", r"^$"),
]:
    _Loader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first) or [""])
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def load_yaml(text: str) -> Any:
    """Parse pim.yaml text with `_Loader`'s rules; raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _problems(err: ValidationError) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("shell", "file"))
        if e["type"] == "extra_forbidden":
            msg = "unknown key (see `pim schema` for the allowed keys)"
        elif e["type"] == "string_type" and isinstance(e.get("input"), (bool, int, float)):
            msg = (f"{e['input']!r} is a {type(e['input']).__name__} here, text expected: put it in quotes, "
                   f"e.g. '{e['input']}', so YAML keeps it as written")
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
        data = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(str(path), [Problem(where, f"not valid YAML: {getattr(e, 'problem', e)}")]) from None
    return parse_config(data, path.parent, str(path))


def json_schema() -> dict[str, Any]:
    return Config.model_json_schema()
