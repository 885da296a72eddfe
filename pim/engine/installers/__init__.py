"""Answer files: rendering templates with the build's variables."""

from __future__ import annotations

from typing import Any

from pim.engine.errors import InputError


def render(template: str, variables: dict[str, Any], what: str) -> str:
    """Render a Jinja2 template; an undefined variable is an input error naming it."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    try:
        return env.from_string(template).render(**variables)
    except jinja2.UndefinedError as e:
        known = ", ".join(sorted(variables))
        raise InputError(f"{what}: {e.message}; available variables: {known}") from None
    except jinja2.TemplateSyntaxError as e:
        raise InputError(f"{what}: line {e.lineno}: {e.message}") from None
