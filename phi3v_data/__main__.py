"""``python -m phi3v_data`` is ``phi3v-data``."""

from phi3v_data.cli import main

main()
