"""Packaging beyond pyproject.toml: the repository's top-level configs/ ships inside the wheel as cnnctl/configs.

pyproject.toml cannot both discover packages and map one package to another folder, so the mapping lives here.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["cnnctl", "cnnctl.*"]), "cnnctl.configs"],
    package_dir={"cnnctl.configs": "configs"},
)
