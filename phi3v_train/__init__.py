"""phi3v_train: fine-tune Phi-3.5-vision on the layout that ``phi3v_data`` writes.

Needs the ``train`` extra (torch, transformers 5, peft, accelerate). Nothing here is
imported by ``phi3v_data``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phi3v")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
