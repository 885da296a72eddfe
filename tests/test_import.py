import subprocess
import sys


def test_import_pim_is_cheap() -> None:
    code = ("import sys, pim; heavy = [m for m in ('pydantic', 'qemu', 'paramiko', 'pulumi', 'boto3', 'yaml', 'typer', 'grpc', 'msgpack')"
            " if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_engine_never_imports_front_ends() -> None:
    import re
    from pathlib import Path

    import pim.engine

    front = re.compile(r"^\s*(from|import)\s+pim\.(cli|pulumi_provider|tofu)\b", re.M)
    for path in Path(pim.engine.__file__).parent.rglob("*.py"):
        assert not front.search(path.read_text()), path
