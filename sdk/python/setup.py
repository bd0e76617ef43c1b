"""Build hooks: generate the contract code from the protos while the package is built, and put
the protos into an sdist so it can be built anywhere. Everything else is in pyproject.toml."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


class BuildWithContract(build_py):
    def run(self) -> None:
        sys.path.insert(0, str(HERE))  # the build runs this file, not from its directory's package
        import codegen

        if codegen.generate() != 0:
            raise SystemExit("generating the contract code failed")
        super().run()


class SdistWithProtos(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        shutil.copytree(HERE.parent.parent / "protos", Path(base_dir) / "protos", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithContract, "sdist": SdistWithProtos})
