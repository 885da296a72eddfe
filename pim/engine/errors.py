"""One error hierarchy for the engine; only pim.cli turns these into exit codes."""

from __future__ import annotations

from dataclasses import dataclass

from pim.engine.events import mask_live


class PimError(Exception):
    """Base of every error PIM raises on purpose.

    Its text (`str(e)`) has the secrets of every live build masked
    (pim.engine.events.Secrets), so no front end can show one: the CLI, a Terraform
    diagnostic, a Pulumi error. Subclasses compose their text in `_text`.
    """

    exit_code = 1

    def __str__(self) -> str:
        return mask_live(self._text())

    def _text(self) -> str:
        return super().__str__()


class InputError(PimError):
    """The user's input is wrong; nothing was built. Exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    path: str  # dotted location in the config, e.g. images.web.disk_size
    message: str  # the rule that was broken, quoting the bad value

    def __str__(self) -> str:
        return mask_live(f"{self.path}: {self.message}" if self.path else self.message)


class SpecError(InputError):
    """A config with one or more problems; all of them are listed at once."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


class ChecksumMismatch(InputError):
    def __init__(self, what: str, expected: str, actual: str):
        self.expected, self.actual = expected, actual
        super().__init__(
            f"{what}: sha256 mismatch: expected {expected}, got {actual}. "
            "Fix the sha256 in the config or the source it points at."
        )


class MissingTool(InputError):
    """A program PIM needs is not installed (not on PATH); the message names the package
    that installs it on this platform (Debian's, or Homebrew's on macOS)."""

    def __init__(self, tool: str, package: str | None, platform: str | None = None):
        from pim.engine.platforms import install_hint

        self.tool, self.package = tool, package
        super().__init__(f"{tool} is not installed (not found on PATH): {install_hint(tool, package, platform)}")


class BuildError(PimError):
    """A build failed after it started. `tail` carries the relevant log lines."""

    def __init__(self, message: str, tail: list[str] | None = None):
        self.tail = list(tail or [])
        super().__init__(message)

    def _text(self) -> str:
        msg = super()._text()
        if not self.tail:
            return msg
        return msg + "\n--- last lines ---\n" + "\n".join(self.tail)


class CommandError(BuildError):
    """A subprocess failed: carries argv, exit status (negative = signal) and output tail."""

    def __init__(self, argv: list[str], returncode: int, output: str):
        import shlex

        self.argv, self.returncode = argv, returncode
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        super().__init__(f"command failed ({how}): {shlex.join(argv)}", output.splitlines()[-40:])


class WaitTimeout(BuildError):
    """A condition polled by pim.engine.wait did not hold within its deadline."""


class WaitAborted(BuildError):
    """A poll gave up early: what it waited on is gone (its `alive()` check said so)."""


class VMError(BuildError):
    """QEMU could not be started, controlled or stopped."""


class ResumeFailed(VMError):
    """A saved machine state (the boot snapshot) did not load; booting the disk still can."""


class InstallerFailed(BuildError):
    """The installer printed a known failure line or ran past its deadline."""


class ProvisionError(BuildError):
    """A provisioning step failed."""


class LoginRefused(ProvisionError):
    """The guest's sshd answers but refuses the build's credentials: waiting cannot help."""
