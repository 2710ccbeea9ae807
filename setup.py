"""The one packaging setting setup.cfg cannot express: ``experiments/`` ships inside the package as
``caef.experiments`` (its YAML files as package data), so an installed caef runs ``caef pipeline
experiments/demo.yaml`` from any folder. Everything else is in setup.cfg."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["caef", "caef.*"]), "caef.experiments"],
    package_dir={"caef.experiments": "experiments"},
    package_data={"caef.experiments": ["*.yaml", "*/*.yaml"]},
)
