"""The CRI v1 wire contract: our .proto and the stubs generated from it."""
