"""Generate Python code, type stubs and gRPC stubs from protos/mcp/v1 into mcp_server/proto.

protoc writes `from mcp.v1 import x_pb2`, which would claim the top-level name `mcp` (taken on
PyPI by an unrelated project); the imports are rewritten to `mcp_server.proto` instead. The
descriptors keep their `mcp/v1/*.proto` names, so reflection and other languages are unaffected.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "mcp_server" / "proto"


def main() -> int:
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "mcp" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            print("protoc failed", file=sys.stderr)
            return 1
        OUT.mkdir(parents=True, exist_ok=True)
        for old in OUT.glob("*_pb2*"):
            old.unlink()
        for path in sorted((Path(tmp) / "mcp" / "v1").iterdir()):
            text = re.sub(r"\bfrom mcp\.v1 import\b", "from mcp_server.proto import", path.read_text())
            (OUT / path.name).write_text(text)
    (OUT / "__init__.py").write_text('"""Code generated from protos/mcp/v1 by tools/gen_protos.py; do not edit."""\n')
    shutil.rmtree(OUT / "__pycache__", ignore_errors=True)
    print(f"generated {len(sources)} protos into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
