"""The namespace/cgroup runner: OCI runtime spec, conmon + OCI runtime driver, cgroups."""
