"""Inventory: sites, GB200 NVL72 racks and their trays, as Flow and the NICo cloud know them."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import datetime

from exporter.models import NVL72_TRAYS, ComponentType


@dataclass
class Site:
    """A NICo site. ``gone`` hides it entirely; ``down`` makes its Flow calls time out."""

    id: str
    name: str
    org: str
    flow: bool
    created: datetime
    infrastructure_provider_id: str
    registration_token: str
    city: str
    updated: datetime | None = None
    down: bool = False
    down_delay_s: float = 0.0
    gone: bool = False
    rack_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Bmc:
    type: str
    mac_address: str
    ip_address: str


@dataclass
class Tray:
    """A compute tray, NVSwitch tray or power shelf of a rack."""

    id: str
    rack_id: str
    site_id: str
    component_id: str
    type: ComponentType
    name: str
    model: str
    serial_number: str
    firmware_version: str
    slot_id: int
    tray_idx: int
    host_id: int
    bmcs: tuple[Bmc, ...]
    power_state: str = "on"
    operation_status: str = "Ready"
    leak_status: str = "NoLeak"
    manufacturer: str = "NVIDIA"

    @property
    def description(self) -> str:
        return f"{self.type.value} tray in slot {self.slot_id}"


@dataclass
class Rack:
    """A GB200 NVL72 rack: 18 compute trays, 9 NVSwitch trays, 8 power shelves."""

    id: str
    site_id: str
    name: str
    serial_number: str
    region: str
    datacenter: str
    room: str
    position: str
    tray_ids: list[str] = field(default_factory=list)
    manufacturer: str = "NVIDIA"
    model: str = "GB200 NVL72"

    @property
    def description(self) -> str:
        return f"GB200 NVL72 rack {self.name}"


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def make_tray(
    rng: random.Random, tray_id: str, rack: Rack, kind: ComponentType, index: int, slot: int
) -> Tray:
    """A tray of ``kind`` at ``slot`` with plausible ids, serials, firmware and BMCs."""
    if kind is ComponentType.COMPUTE:
        # Compute trays are NICo machines: their external id is a machine id.
        component_id = "fm100ht" + "".join(
            rng.choice(string.ascii_lowercase + "0123456789") for _ in range(52)
        )
        bmc_types: tuple[str, ...] = ("BmcTypeHost", "BmcTypeDpu", "BmcTypeDpu")
        model, firmware, prefix = "GB200 Compute Tray", "2.1.0", "compute-tray"
    elif kind is ComponentType.NVSWITCH:
        component_id = f"nvsw-{_hex(rng, 16)}"
        bmc_types = ("BmcTypeHost",)
        model, firmware, prefix = "GB200 NVLink Switch Tray", "1.4.2", "nvswitch-tray"
    else:
        component_id = f"psu-{_hex(rng, 16)}"
        bmc_types = ("BmcTypeHost",)
        model, firmware, prefix = "GB200 Power Shelf", "3.0.7", "powershelf"
    bmcs = tuple(
        Bmc(
            bmc_type,
            ":".join(f"{rng.randrange(256):02X}" for _ in range(6)),
            f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        )
        for bmc_type in bmc_types
    )
    return Tray(
        id=tray_id,
        rack_id=rack.id,
        site_id=rack.site_id,
        component_id=component_id,
        type=kind,
        name=f"{prefix}-{index + 1}",
        model=model,
        serial_number=f"TSN{rng.randrange(10**9):09d}",
        firmware_version=firmware,
        slot_id=slot,
        tray_idx=index,
        host_id=index + 1 if kind is ComponentType.COMPUTE else 0,
        bmcs=bmcs,
    )


def nvl72_layout() -> list[tuple[ComponentType, int, int]]:
    """(type, index within type, slot) for the 35 trays, top to bottom.

    4 power shelves, 10 compute trays, 9 NVSwitch trays, 8 compute trays, 4 power shelves.
    """
    compute, switches, shelves = (
        NVL72_TRAYS[ComponentType.COMPUTE],
        NVL72_TRAYS[ComponentType.NVSWITCH],
        NVL72_TRAYS[ComponentType.POWERSHELF],
    )
    top_compute = compute - compute * 4 // 9  # 10 of 18 above the switches
    order: list[tuple[ComponentType, int]] = []
    order += [(ComponentType.POWERSHELF, i) for i in range(shelves // 2)]
    order += [(ComponentType.COMPUTE, i) for i in range(top_compute)]
    order += [(ComponentType.NVSWITCH, i) for i in range(switches)]
    order += [(ComponentType.COMPUTE, i) for i in range(top_compute, compute)]
    order += [(ComponentType.POWERSHELF, i) for i in range(shelves // 2, shelves)]
    return [(kind, index, slot) for slot, (kind, index) in enumerate(order, start=1)]
