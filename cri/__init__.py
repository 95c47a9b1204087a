"""skiffd: the CRI v1 daemon (config, gRPC server, servicers, managers, state store)."""

from importlib import metadata


def package_version() -> str:
    try:
        return metadata.version("skiff-cri")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
