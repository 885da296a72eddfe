import pytest

from pim.engine.errors import InputError
from pim.engine.installers import render

SECRET = "Tr0ub4dor&3-hunter2"


def test_filters() -> None:
    text = render(
        "{{ m | url_scheme }} {{ m | url_host }} {{ m | url_path }} {{ bare | url_path }} "
        "{{ d | basename }} {{ label | iso_label }} {{ key | sh }}",
        {"m": "https://mirror.example:8443/debian", "bare": "http://m.example", "d": "/dev/vda",
         "label": "Fedora 40 x86_64", "key": "ssh-ed25519 AAAA it's me"},
        "t",
    )
    assert text == ("https mirror.example:8443 /debian / vda Fedora\\x2040\\x20x86_64 "
                    "'ssh-ed25519 AAAA it'\"'\"'s me'")


def test_undefined_variable_is_named_with_the_known_ones() -> None:
    with pytest.raises(InputError) as e:
        render("{{ hostnme }}", {"hostname": "web1"}, "answer.txt")
    assert str(e.value) == ("answer.txt: line 1: 'hostnme' is undefined (did you mean 'hostname'?); "
                                "available variables: hostname")


@pytest.mark.parametrize("template", [
    "{{ {}[ssh_password] }}",  # UndefinedError whose message quotes the key
    "line one\n{{ {}.pop(ssh_password) }}",  # KeyError quoting it
    "{{ ssh_password ~ 1 + 2 }}",  # TypeError
    "{% if %}{{ ssh_password }}",  # syntax error
])
def test_render_errors_never_carry_values(template: str) -> None:
    variables = {"ssh_password": SECRET, "hostname": "web1", "short_secret_token": "ab"}
    with pytest.raises(InputError) as e:
        render(template, variables, "ks.cfg")
    message = str(e.value)
    assert SECRET not in message and "hunter2" not in message
    assert message.startswith("ks.cfg: ")
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_runtime_error_names_the_template_line() -> None:
    with pytest.raises(InputError) as e:
        render("line one\n{{ {}.pop(ssh_password) }}", {"ssh_password": SECRET}, "ks.cfg")
    assert str(e.value) == "ks.cfg: line 2: KeyError: '********'"


def test_short_secrets_are_masked_too() -> None:
    with pytest.raises(InputError) as e:
        render("{{ {}[api_token] }}", {"api_token": "ab"}, "t")
    assert "'ab'" not in str(e.value)
