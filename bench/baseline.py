"""An older commit of this repository, unpacked beside the working tree, so that a benchmark can
run its orchestrator and today's in the same run (`python -m bench --baseline REF`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ROOT / "bench" / ".baseline"


def prepare(ref: str) -> Path:
    """Unpack `ref` (a commit, tag or branch) under bench/.baseline/<sha> and generate its protos.
    It runs on this checkout's virtual environment, so it must not need packages this one lacks."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    target = BASELINES / sha
    marker = target / ".prepared"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        # Before the SDK the contract code was generated into mcp_server/proto by tools/gen_protos.py.
        generator = (
            "sdk/python/codegen.py" if (target / "sdk" / "python" / "codegen.py").exists() else "tools/gen_protos.py"
        )
        subprocess.run([sys.executable, generator], cwd=target, check=True, capture_output=True)
        marker.touch()
    return target


def import_paths(code: Path) -> list[str]:
    """What goes on PYTHONPATH to import that checkout's server (and its SDK, once it had one)."""
    return [str(code)] + ([str(code / "sdk" / "python")] if (code / "sdk" / "python").is_dir() else [])
