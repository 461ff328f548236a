"""Setuptools hook: ship the repository's models.lock inside the package.

Everything else is declared in pyproject.toml. The lock stays at the top of the repository, where
people edit it, and is read as package data (`gram_local.paths.packaged_lock`) once installed.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

LOCK = "models.lock"


class BuildPyWithLock(build_py):
    """build_py, plus models.lock copied to gram_local/models.lock in the build."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads the repository's own file
            self.copy_file(LOCK, str(Path(self.build_lib, "gram_local", LOCK)))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs: list[str] = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, str(Path(self.build_lib, "gram_local", LOCK))]


setup(cmdclass={"build_py": BuildPyWithLock})
