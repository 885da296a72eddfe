"""Answer files: rendering templates with the build's variables.

Built-in templates per installer family live in `templates/` (see families.py);
user templates render through the same `render`, with the same filters.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import urllib.parse
from typing import Any

from pim.engine.errors import InputError
from pim.engine.events import Secrets

# Variables whose values are secret whatever their length; other string values are
# masked in error messages too, but only from 4 characters on so that messages stay
# readable (a keyboard layout "us" would otherwise be masked inside every word).
_SECRET_NAME = re.compile(r"password|secret|token|passphrase", re.IGNORECASE)


def _url_part(part: str):
    def get(url: str) -> str:
        parsed = urllib.parse.urlsplit(str(url))
        if part == "path":
            return parsed.path or "/"
        return {"scheme": parsed.scheme, "host": parsed.netloc}[part]

    return get


def _iso_label(label: str) -> str:
    # dracut/anaconda read LABEL= values with \x20 for spaces (udev's escaping).
    return str(label).replace(" ", "\\x20")


def _sha512_crypt(password: str, context: str = "") -> str:
    from pim.engine.installers.passwords import password_hash

    return password_hash(str(password), context)


FILTERS = {
    "sh": lambda value: shlex.quote(str(value)),  # one shell (or kickstart) word
    "url_scheme": _url_part("scheme"),
    "url_host": _url_part("host"),  # host[:port]
    "url_path": _url_part("path"),
    "basename": lambda path: posixpath.basename(str(path)),
    "iso_label": _iso_label,
    "sha512_crypt": _sha512_crypt,
}


def environment(undefined: Any = None) -> Any:
    import jinja2

    env = jinja2.Environment(
        undefined=undefined or jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )
    env.filters.update(FILTERS)
    return env


def render(template: str, variables: dict[str, Any], what: str) -> str:
    """Render a Jinja2 template; an undefined variable is an input error naming it.

    Error messages name the template line and never carry variable values: a
    template that fails on a password must not put the password in a log.
    """
    import jinja2

    env = environment()
    try:
        return env.from_string(template).render(**variables)
    except jinja2.UndefinedError as e:
        known = ", ".join(sorted(variables))
        raise InputError(f"{what}: {redact(e.message or str(e), variables)}; available variables: {known}") from None
    except jinja2.TemplateSyntaxError as e:
        raise InputError(f"{what}: line {e.lineno}: {redact(e.message or str(e), variables)}") from None
    except Exception as e:  # a filter or an operation failed on a value
        line = _template_line(e)
        where = f"line {line}: " if line else ""
        raise InputError(f"{what}: {where}{type(e).__name__}: {redact(str(e), variables)}") from None


def redact(message: str, variables: dict[str, Any]) -> str:
    """message with every variable value in it masked (secrets whatever their length)."""
    values = Secrets(live=False)
    for name, value in variables.items():
        if isinstance(value, str):
            values.add(value, min_length=1 if _SECRET_NAME.search(name) else None)
    return values.redact(message)


def _template_line(error: BaseException) -> int | None:
    # Jinja rewrites tracebacks so that template frames carry the template's line numbers.
    tb, line = error.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
