"""phi3v_data: Phi-3.5-vision fine-tuning data without torch."""

from importlib.metadata import PackageNotFoundError, version

from phi3v_data.tokens import hd_size, num_image_tokens

try:
    __version__ = version("phi3v")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__", "hd_size", "num_image_tokens"]
