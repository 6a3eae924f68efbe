"""Built-in converters, one module per source format.

Each module subclasses :class:`phi3v_data.converter.Converter` and registers it with
:func:`phi3v_data.registry.register`. Converters import only the engine-facing API
(``converter``, ``media``, ``video``, ``schema``, ``registry``), never each other or the CLI.
"""
