"""The marker of a schema field whose value a YAML gives (``head=<name>``'s values live in its YAML).

It is OmegaConf's ``MISSING`` (the string ``"???"``), spelled here so that the model code, which
never sees the config, does not import the config library to declare its schemas.
"""

MISSING = "???"
