"""Generate the contract's Python code (messages, type stubs, gRPC stubs) from the .proto files
into mcp_sdk/proto. Run by the package build (setup.py) and by `make proto`; the generated
files are never committed: the .proto files are the one source.

protoc writes `from mcp.v1 import x_pb2`, which would claim the top-level name `mcp` (taken on
PyPI by an unrelated project); the imports are rewritten to `mcp_sdk.proto`. The descriptors
keep their `mcp/v1/*.proto` names, so reflection and other languages are unaffected.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "mcp_sdk" / "proto"


def protos_dir() -> Path:
    """The protos: the repository's (building in the tree) or the copy an sdist carries."""
    for candidate in (HERE.parent.parent / "protos", HERE / "protos"):
        if (candidate / "mcp" / "v1").is_dir():
            return candidate
    raise FileNotFoundError("no protos/mcp/v1 beside the SDK (../../protos) nor in it (./protos)")


def generate(out: Path = OUT) -> int:
    from grpc_tools import protoc

    protos = protos_dir()
    sources = sorted(str(p.relative_to(protos)) for p in (protos / "mcp" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{protos}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            print("protoc failed", file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        generated = {
            "__init__.py": '"""Code generated from protos/mcp/v1 by codegen.py; do not edit."""\n',
            "py.typed": "",
        }
        for path in sorted((Path(tmp) / "mcp" / "v1").iterdir()):
            generated[path.name] = re.sub(r"\bfrom mcp\.v1 import\b", "from mcp_sdk.proto import", path.read_text())
        # Each file is replaced whole (a process importing the package meanwhile never reads half a
        # file), then files no longer generated are removed.
        for name, text in generated.items():
            partial = out / f".{name}.partial"
            partial.write_text(text)
            os.replace(partial, out / name)
        for stale in out.glob("*_pb2*"):
            if stale.name not in generated:
                stale.unlink()
    shutil.rmtree(out / "__pycache__", ignore_errors=True)
    print(f"generated {len(sources)} protos into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(generate())
