"""skiffd: the CRI v1 daemon (config, gRPC server, servicers, managers, state store)."""

import functools
from importlib import metadata


@functools.cache
def package_version() -> str:
    """Read once: parsing the package's metadata took a third of a Version call."""
    try:
        return metadata.version("skiff-cri")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
