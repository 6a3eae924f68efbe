"""phi3v_data: Phi-3.5-vision fine-tuning data without torch.

The Python API behind ``phi3v-data``: the data contract (:class:`Sample`, :class:`Turn`),
JSONL reading and writing, ``validate``, ``stats`` and the image-token arithmetic.
"""

from importlib.metadata import PackageNotFoundError, version

from phi3v_data.engine import convert
from phi3v_data.jsonl import JsonlError, read_jsonl, write_jsonl
from phi3v_data.schema import Sample, Turn
from phi3v_data.stats import stats
from phi3v_data.tokens import hd_size, num_image_tokens
from phi3v_data.validate import Problem, Report, validate

try:
    __version__ = version("phi3v")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "JsonlError",
    "Problem",
    "Report",
    "Sample",
    "Turn",
    "__version__",
    "convert",
    "hd_size",
    "num_image_tokens",
    "read_jsonl",
    "stats",
    "validate",
    "write_jsonl",
]
