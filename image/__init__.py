"""Image management: references, registries, the registry client, blob and layer stores."""
