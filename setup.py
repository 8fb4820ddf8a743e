"""Only what pyproject.toml cannot say: the checkout's root *is* the package ``retain``
(``package-dir``), so its subpackages are found here and named ``retain.<name>``;
setuptools' own ``packages.find`` would install them as top-level packages. Every other
setting is in pyproject.toml; tests/test_packaging.py builds the wheel and checks it."""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Beside the package, not in it: the suite, the benchmarks, the example plugins (packages
# of their own), the docs; and what a build leaves behind.
NOT_INSTALLED = ["tests", "benchmarks", "examples", "docs", "build", "dist"]


class BuildPy(build_py):
    """The package's modules without this script, which sits among them (setuptools leaves
    its setup script out only when run as ``python setup.py``, not under pip or build)."""

    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if m[:2] != ("retain", "setup")]


setup(packages=["retain", *(f"retain.{name}" for name in
                            find_packages(".", exclude=[p for n in NOT_INSTALLED for p in (n, f"{n}.*")]))],
      cmdclass={"build_py": BuildPy})
