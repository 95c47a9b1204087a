"""The ground floor: host primitives every layer may use; the standard library only."""
