"""The `tq` command: `tq plan` (KV capacity per bit config) and `tq demo` (real model K/V)."""
