"""Streaming server: Exec, Attach and PortForward over WebSocket and SPDY."""
