# cffi_modules is a setup() keyword that pyproject.toml cannot express; everything else lives there.
from setuptools import setup

setup(cffi_modules=["cengine/build_cengine.py:ffibuilder"])
