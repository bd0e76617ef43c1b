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
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    target = BASELINES / sha
    if not (target / "mcp_server" / "proto" / "task_pb2.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        subprocess.run([sys.executable, "tools/gen_protos.py"], cwd=target, check=True, capture_output=True)
    return target
