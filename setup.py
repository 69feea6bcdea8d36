"""The packages of persona-platform, installed under one namespace: ``persona_platform.<folder>``.

The folders stay at the repository root; each is mapped to ``persona_platform.<folder>``, so nothing with a
generic top-level name (resources, partitions, benchmarks) lands in site-packages. Subpackages are found
here, so a new domain or backend folder needs no line in any file. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

NAMESPACE = "persona_platform"
FOLDERS = ("persona_assets", "partitions", "resources", "benchmarks")

setup(
    package_dir={f"{NAMESPACE}.{folder}": folder for folder in FOLDERS},
    packages=[
        f"{NAMESPACE}.{folder}{sub}"
        for folder in FOLDERS
        for sub in ("", *(f".{p}" for p in find_packages(folder)))
    ],
)
