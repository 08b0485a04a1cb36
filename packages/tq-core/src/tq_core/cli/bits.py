"""Parsing of bit configs as users write them on the command line: K4V4, K6V4, K4V4+qjl."""

from __future__ import annotations

import re

from tq_core.config import check_bits, check_qjl_bits
from tq_core.errors import TQConfigError

_PATTERN = re.compile(r"^K(\d+)V(\d+)(\+qjl)?$", re.IGNORECASE)


def parse_bit_configs(text: str) -> list[tuple[int, int, bool]]:
    """``"K4V4,K6V4+qjl"`` -> ``[(4, 4, False), (6, 4, True)]``, each width checked."""
    configs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _PATTERN.match(item)
        if not match:
            raise TQConfigError(
                f"bit config {item!r} is not understood; write e.g. K4V4 or K6V4+qjl"
            )
        k_bits = check_bits("k_bits", int(match.group(1)))
        v_bits = check_bits("v_bits", int(match.group(2)))
        key_qjl = bool(match.group(3))
        if key_qjl:
            check_qjl_bits(k_bits)
        configs.append((k_bits, v_bits, key_qjl))
    if not configs:
        raise TQConfigError("no bit configs given; write e.g. K4V4,K6V4")
    return configs
