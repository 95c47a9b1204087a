"""skiffd: the CRI v1 daemon (config, gRPC server, servicers, managers, state store)."""

#: skiff's version; pyproject.toml takes it from here (read at run time without
#: importlib.metadata, which loads email, zipfile and more for it).
VERSION = "0.1.0"
