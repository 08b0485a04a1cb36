"""Parsing of bit configs as users write them on the command line: K4V4, K6V4, K4V4+qjl, and
for `tq eval` the quality levers too: K4V4+first1+last1."""

from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class QualityConfig:
    """One config for `tq eval`: bit widths and the quality levers (QJL keys, boundary layers
    kept uncompressed, the uniform, Lloyd-Max grid or companded codebook for keys and / or
    values).
    ``options`` are the matching ``TQConfig`` keyword arguments."""

    k_bits: int
    v_bits: int
    key_qjl: bool = False
    skip_first_layers: int = 0
    skip_last_layers: int = 0
    key_codebook: str = "lloyd-max"
    value_codebook: str = "lloyd-max"

    @property
    def label(self) -> str:
        levers = ""
        for codebook, lever in _CODEBOOK_LEVERS.items():
            keys, values = self.key_codebook == codebook, self.value_codebook == codebook
            levers += f"+{lever}" if keys and values else f"+{lever}k" if keys else ""
            levers += f"+{lever}v" if values and not keys else ""
        return (
            f"K{self.k_bits}V{self.v_bits}"
            + ("+qjl" if self.key_qjl else "")
            + levers
            + (f"+first{self.skip_first_layers}" if self.skip_first_layers else "")
            + (f"+last{self.skip_last_layers}" if self.skip_last_layers else "")
        )

    @property
    def options(self) -> dict:
        return {
            "k_bits": self.k_bits, "v_bits": self.v_bits, "key_qjl": self.key_qjl,
            "skip_first_layers": self.skip_first_layers,
            "skip_last_layers": self.skip_last_layers, "key_codebook": self.key_codebook,
            "value_codebook": self.value_codebook,
        }  # fmt: skip


# Codebook levers: +NAME for keys and values, +NAMEk for keys, +NAMEv for values.
_CODEBOOK_LEVERS = {"uniform": "uniform", "lloyd-max-grid": "grid", "companded": "companded"}
_LEVER = re.compile(
    r"\+(qjl|uniform[kv]?|grid[kv]?|companded[kv]?|first(\d+)|last(\d+))", re.IGNORECASE
)


def _codebook(names: list[str], tensor: str, item: str) -> str:
    """The codebook the levers ``names`` give K (``tensor`` "k") or V ("v")."""
    chosen = [
        codebook
        for codebook, lever in _CODEBOOK_LEVERS.items()
        if {lever, lever + tensor} & set(names)
    ]
    if len(chosen) > 1:
        raise TQConfigError(f"config {item!r} gives {tensor.upper()} two codebooks: {chosen}")
    return chosen[0] if chosen else "lloyd-max"


def parse_quality_configs(text: str) -> list[QualityConfig]:
    """``"K4V4,K4V4+first1+last1,K5V4+qjl"`` -> QualityConfigs. ``+qjl``: keys spend one of
    their bits on a QJL residual sketch; ``+firstN`` / ``+lastN``: the first / last N layers
    stay uncompressed (bf16), where errors are said to hurt most; ``+uniform`` / ``+uniformk``
    / ``+uniformv``: evenly spaced levels for keys and values / keys / values; ``+grid`` /
    ``+gridk`` / ``+gridv``: the Lloyd-Max grid codebook (4-bit fields then decode faster on
    GPUs, docs/kernels.md); ``+companded`` / ``+compandedk`` / ``+compandedv``: the companded
    codebook (4-bit fields then store faster on GPUs)."""
    configs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        head = re.match(r"^K(\d+)V(\d+)", item, re.IGNORECASE)
        levers = _LEVER.findall(item[head.end() :]) if head else []
        rebuilt = (head.group(0) if head else "") + "".join("+" + lever[0] for lever in levers)
        if not head or rebuilt.lower() != item.lower():
            raise TQConfigError(
                f"config {item!r} is not understood; write e.g. K4V4, K4V4+qjl, K4V4+uniformv "
                "or K4V4+first1+last1"
            )
        k_bits = check_bits("k_bits", int(head.group(1)))
        v_bits = check_bits("v_bits", int(head.group(2)))
        names = [lever[0].lower() for lever in levers]
        key_qjl = "qjl" in names
        if key_qjl:
            check_qjl_bits(k_bits)
        first = sum(int(lever[1]) for lever in levers if lever[1])
        last = sum(int(lever[2]) for lever in levers if lever[2])
        key_codebook = _codebook(names, "k", item)
        value_codebook = _codebook(names, "v", item)
        configs.append(
            QualityConfig(k_bits, v_bits, key_qjl, first, last, key_codebook, value_codebook)
        )
    if not configs:
        raise TQConfigError("no configs given; write e.g. K4V4,K6V4")
    return configs
