"""One exception hierarchy; each error carries its message and its exit code.

Only cli.main() turns these into exit codes and one-line messages. Nothing here does I/O.

Exit codes (also in `pkgsandbox --help` and the README):
  0    success
  1    an operation failed (pacman's convention)
  2    bad input: a profile, an argument, a configuration file
  120  a sandbox requirement is not met (hard-requirement, min_abi): nothing was run
  121  the sandbox could not be set up (ruleset, chroot, user switch): nothing was run
  124  the sandboxed program timed out and was killed with its process group
  126  the program could not be executed (permission, format)
  127  the program was not found
  128+N  the program was killed by signal N
For `run`, any other status is the program's own.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REQUIREMENT = 120
EXIT_SETUP = 121
EXIT_TIMEOUT = 124
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127


class PkgsandboxError(Exception):
    """Base: a message for the user, an exit code, and optional fields for --json."""
    exit_code = EXIT_FAILED
    kind = "error"

    def __init__(self, message: str, **fields):
        super().__init__(message)
        self.message = message
        self.fields = fields

    def as_dict(self) -> dict:
        return {"error": self.kind, "message": self.message, "exit_code": self.exit_code,
                **{k: v for k, v in self.fields.items() if v is not None}}


class BadInput(PkgsandboxError):
    exit_code = EXIT_BAD_INPUT
    kind = "bad-input"


class UsageError(BadInput):
    kind = "usage"


class ProfileError(BadInput):
    """A profile that cannot be used. The message starts with file:line: key: ..."""
    kind = "profile"

    def __init__(self, file: str, line: int | None, key: str, problem: str):
        where = f"{file}:{line}" if line else file
        text = f"{where}: {key}: {problem}" if key else f"{where}: {problem}"
        super().__init__(text, file=file, line=line, key=key)


class ProfileNotFound(BadInput):
    kind = "profile-not-found"


class RequirementError(PkgsandboxError):
    """The compat level or min_abi forbids running on this kernel."""
    exit_code = EXIT_REQUIREMENT
    kind = "requirement"


class SetupError(PkgsandboxError):
    """The sandbox could not be built or entered; nothing untrusted ran."""
    exit_code = EXIT_SETUP
    kind = "setup"


class ExecError(PkgsandboxError):
    exit_code = EXIT_CANNOT_EXEC
    kind = "exec"


class NotFound(ExecError):
    exit_code = EXIT_NOT_FOUND
    kind = "not-found"


class TimeoutExpired(PkgsandboxError):
    exit_code = EXIT_TIMEOUT
    kind = "timeout"
