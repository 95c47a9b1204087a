"""The gRPC servicers: one module per RPC family, each method short (validate, convert
proto to plain data, call a manager, convert back)."""
