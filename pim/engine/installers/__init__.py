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


# How to keep template syntax as text: said with every template syntax error.
LITERAL_HINT = ("this file is rendered as a Jinja2 template; to keep text such as '{{', '{%' or '{#' "
                "literally, put it between {% raw %} and {% endraw %}")


def render(template: str, variables: dict[str, Any], what: str, literal_hint: str = LITERAL_HINT) -> str:
    """Render a Jinja2 template; any problem is an InputError naming `what` and the line.

    Every variable the template names must be in `variables`, even on a branch this
    render does not take (a misspelt name fails in `pim validate`, not in a later
    build); the message names it, suggests the closest known name and lists them all.
    A syntax error says it is template syntax and how to keep text literally
    (`literal_hint`). A `${#` (a shell array length) opening a Jinja comment is an
    error too, since the text up to the next `#}` would vanish silently. Messages
    never carry variable values: a template that fails on a password must not put
    the password in a log.
    """
    import jinja2

    env = environment()
    try:
        _check_comments(env, template, what, literal_hint)
        ast = env.parse(template)
        _check_names(ast, variables, what)
        return env.from_string(template).render(**variables)
    except jinja2.UndefinedError as e:
        line = _template_line(e)
        where = f"line {line}: " if line else ""
        raise InputError(f"{what}: {where}{redact(e.message or str(e), variables)}{_known(variables)}") from None
    except jinja2.TemplateSyntaxError as e:
        raise InputError(f"{what}: line {e.lineno}: template syntax error: {redact(e.message or str(e), variables)}"
                         f"; {literal_hint}") from None
    except InputError:
        raise
    except Exception as e:  # a filter or an operation failed on a value
        line = _template_line(e)
        where = f"line {line}: " if line else ""
        raise InputError(f"{what}: {where}{type(e).__name__}: {redact(str(e), variables)}") from None


def _known(variables: dict[str, Any]) -> str:
    return f"; available variables: {', '.join(sorted(variables))}"


def _check_names(ast: Any, variables: dict[str, Any], what: str) -> None:
    import difflib

    import jinja2.meta
    import jinja2.nodes

    missing = jinja2.meta.find_undeclared_variables(ast) - set(variables)
    # `x | default(...)` and `x is defined` are how a template says x is optional.
    for guard in [*ast.find_all(jinja2.nodes.Filter), *ast.find_all(jinja2.nodes.Test)]:
        if guard.name in ("default", "d", "defined", "undefined") and isinstance(guard.node, jinja2.nodes.Name):
            missing.discard(guard.node.name)
    if not missing:
        return
    lines = {}
    for node in ast.find_all(jinja2.nodes.Name):
        if node.name in missing and node.ctx == "load":
            lines.setdefault(node.name, node.lineno)
    name = min(missing, key=lambda n: (lines.get(n, 0), n))
    close = difflib.get_close_matches(name, list(variables), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InputError(f"{what}: line {lines.get(name, '?')}: {name!r} is undefined{hint}{_known(variables)}")


def _check_comments(env: Any, template: str, what: str, literal_hint: str) -> None:
    previous = ("", "")
    for line, token, value in env.lex(template):
        if token == "comment_begin" and previous[0] == "data" and previous[1].endswith("$"):
            raise InputError(f"{what}: line {line}: '${{#' (a shell array or string length) opens a Jinja2 "
                             f"comment here, which would drop the text up to the next '#}}'; {literal_hint}")
        previous = (token, value)


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
