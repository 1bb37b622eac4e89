"""Projected training speed on hardware we don't have. Always a projection, never a measurement.

The inputs are read from a compiled training step (per device, one step): bytes accessed (and the
hardware FLOPs, kept for reference) from XLA's cost analysis of the unscanned model (a scanned body
is counted once), and the bytes every collective (all-reduce, all-gather, reduce-scatter,
all-to-all, permute) moves, parsed from the optimised HLO. The model, per chip of the target:

    compute = model FLOPs (analytic, per chip) / (peak bf16 FLOP/s x assumed MFU)
    memory  = bytes accessed / HBM bandwidth
    comm    = sum over collectives of ring-algorithm bytes / per-chip collective bandwidth
    step    = max(compute, memory) + comm          (no compute/communication overlap: conservative)

Collectives whose group spans every device of the profiled program are taken to span every chip of
the target (data / FSDP axes grow with the slice); smaller groups (tensor axes) keep their size.
Bytes accessed come from the program compiled for the host CPU, whose fusion differs from TPU/GPU
compilers', so the memory term is indicative only. Kernel-launch and host overheads are not
modelled: for tiny models (a step of microseconds) the projection is a bound real hardware will not
reach.
"""
from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math
import re
from typing import Any

from vit_jax.runtime import hardware

LABEL = "projection"
DEFAULT_MFU = 0.4


@dataclasses.dataclass(frozen=True)
class Target:
  """A slice or node: chip kind (matched against hardware.PEAK_BF16_FLOPS), count and bandwidths."""
  name: str
  chip: str
  chips: int
  hbm_bytes_per_s: float
  # Per chip, one direction, of the link that bounds a ring collective over the whole target.
  collective_bytes_per_s: float
  source: str

  @property
  def peak_flops(self) -> float:
    kind = self.chip.lower()
    for key, peak in hardware.PEAK_BF16_FLOPS:
      if key in kind:
        return peak
    raise ValueError(f"no datasheet peak for chip {self.chip!r}; "
                     "add it to hardware.PEAK_BF16_FLOPS.")


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("tpu-v4-32", "TPU v4", 16, 1200e9, 1.1e15 / 4096,
           "Cloud TPU v4 docs: HBM 1200 GB/s; pod all-reduce bandwidth 1.1 PB/s over 4096 chips"),
    Target("tpu-v5e-16", "TPU v5e", 16, 819e9, 200e9,
           "Cloud TPU v5e docs: HBM 819 GB/s; ICI 400 GB/s bidirectional per chip"),
    Target("tpu-v5p-32", "TPU v5p", 16, 2765e9, 600e9,
           "Cloud TPU v5p docs: HBM 2765 GB/s; ICI 1200 GB/s bidirectional per chip"),
    Target("a100-8x", "A100", 8, 2039e9, 300e9,
           "A100 SXM 80GB: HBM 2039 GB/s; NVLink3 600 GB/s bidirectional per GPU"),
    Target("h100-8x", "H100", 8, 3350e9, 450e9,
           "H100 SXM: HBM 3350 GB/s; NVLink4 900 GB/s bidirectional per GPU"),
    Target("h100-32x", "H100", 32, 3350e9, 50e9,
           "4 nodes of 8 H100 SXM: rings cross nodes over one 400 Gb/s InfiniBand NIC per GPU"),
)}

_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>\([^()]*\)|[a-z]\w*\[[\d,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>pred|[a-z]+\d+)\[(?P<dims>[\d,]*)\]")
_DTYPE_BITS = {"pred": 8}


def _array_bytes(shape_text: str) -> int:
  total = 0
  for m in _ARRAY.finditer(shape_text):
    bits = _DTYPE_BITS.get(m["dtype"]) or int(re.sub(r"\D", "", m["dtype"]) or 8)
    total += math.prod(int(d) for d in m["dims"].split(",") if d) * bits // 8
  return total


def _group_size(line: str, num_devices: int) -> int:
  """Devices per replica group, from any of the HLO spellings of `replica_groups`."""
  if m := re.search(r"replica_groups=mesh\[(?P<axes>[^\]]*)\]\s*\{(?P<used>[^}]*)\}", line):
    sizes = {a: int(s) for a, s in re.findall(r"'([^']+)'=(\d+)", m["axes"])}
    return math.prod(sizes[a] for a in re.findall(r"'([^']+)'", m["used"]))
  if m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line):
    return int(m[2])
  if m := re.search(r"replica_groups=\{\{([\d,]*)\}", line):
    return len(m[1].split(","))
  return num_devices  # Empty replica_groups: every device.


@dataclasses.dataclass(frozen=True)
class Collective:
  op: str
  full_bytes: int  # The whole buffer the group reduces / gathers (what a ring moves (n-1)/n of).
  group_size: int


@dataclasses.dataclass(frozen=True)
class ProgramCost:
  """Per device, per training step, as compiled for `num_devices` devices at `per_device_batch`."""
  flops: float
  bytes_accessed: float
  collectives: tuple[Collective, ...]
  num_devices: int
  per_device_batch: int

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self),
            "collectives": [dataclasses.asdict(c) for c in self.collectives]}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> "ProgramCost":
    return cls(**{**data, "collectives": tuple(Collective(**c) for c in data["collectives"])})


def parse_collectives(hlo_text: str, num_devices: int) -> tuple[Collective, ...]:
  """Every collective of an optimised HLO module with the size of the buffer it works on."""
  found = []
  for line in hlo_text.splitlines():
    if not (m := _COLLECTIVE.search(line)):
      continue
    n = _group_size(line, num_devices)
    result_bytes = _array_bytes(m["shape"])
    if m["op"] == "collective-permute" and line.lstrip().startswith("%collective-permute-start"):
      result_bytes //= 2  # The async start returns (input, output) buffers.
    full = result_bytes * n if m["op"] == "reduce-scatter" else result_bytes
    found.append(Collective(m["op"], full, n))
  return tuple(found)


def program_cost(compiled: Any, num_devices: int, per_device_batch: int) -> ProgramCost:
  """Reads FLOPs, bytes accessed and collectives from a `jax.stages.Compiled` training step."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return ProgramCost(float(cost["flops"]), float(cost.get("bytes accessed", 0.0)),
                     parse_collectives(compiled.as_text(), num_devices), num_devices,
                     per_device_batch)


def _ring_bytes(c: Collective, n: int) -> float:
  if n <= 1:
    return 0.0
  factor = {"all-reduce": 2 * (n - 1) / n, "collective-permute": 1.0}.get(c.op, (n - 1) / n)
  return factor * c.full_bytes


def project(cost: ProgramCost, target: Target, train_flops_per_image: float,
            mfu: float = DEFAULT_MFU) -> dict[str, Any]:
  """Predicted step time and img/s of the profiled program on `target` at the assumed MFU.

  MFU is defined on model FLOPs (vit_jax.models.flops), so the compute term uses those; XLA's count
  also holds rematerialisation, optimizer and elementwise work that MFU does not credit.
  """
  if not 0 < mfu <= 1:
    raise ValueError(f"mfu={mfu}: the assumed model FLOP utilisation must be in (0, 1].")
  compute_s = train_flops_per_image * cost.per_device_batch / (target.peak_flops * mfu)
  memory_s = cost.bytes_accessed / target.hbm_bytes_per_s
  comm_bytes = sum(_ring_bytes(c, (target.chips if c.group_size >= cost.num_devices
                                   else c.group_size))
                   for c in cost.collectives)
  comm_s = comm_bytes / target.collective_bytes_per_s
  step_s = max(compute_s, memory_s) + comm_s
  terms = {"compute": compute_s, "memory": memory_s, "communication": comm_s}
  return {
      "label": LABEL, "target": target.name, "chips": target.chips, "assumed_mfu": mfu,
      "global_batch": cost.per_device_batch * target.chips, "step_s": step_s,
      "img_per_s": cost.per_device_batch * target.chips / step_s, "compute_s": compute_s,
      "memory_s": memory_s, "comm_s": comm_s, "comm_bytes_per_chip": comm_bytes,
      "bound": max(terms, key=terms.get),
  }


def format_projection(p: Mapping[str, Any]) -> str:
  return (f"[{LABEL}] {p['target']} ({p['chips']} chips, global batch {p['global_batch']}, "
          f"assumed MFU {p['assumed_mfu']:.0%}): step {p['step_s'] * 1e3:.2f} ms, "
          f"{p['img_per_s']:,.0f} img/s ({p['bound']}-bound; "
          f"compute {p['compute_s'] * 1e3:.2f} ms, memory {p['memory_s'] * 1e3:.2f} ms, "
          f"comm {p['comm_s'] * 1e3:.2f} ms)")


def get_target(name: str) -> Target:
  if name not in TARGETS:
    raise ValueError(f"unknown projection target {name!r}; choose from {sorted(TARGETS)}.")
  return TARGETS[name]
