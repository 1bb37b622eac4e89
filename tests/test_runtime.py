"""Device peaks for MFU: datasheet peaks, a stated nominal CPU peak, unknown devices reported as
such."""
import dataclasses

import pytest

from vit_jax.runtime import hardware


@dataclasses.dataclass
class FakeDevice:
  platform: str
  device_kind: str


@pytest.mark.parametrize("kind, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("TPU v5 lite", 197e12),
                                        ("NVIDIA H100 PCIe", 756e12)])
def test_datasheet_peaks(kind, peak):
  assert hardware.peak_flops_per_device(FakeDevice("gpu", kind)).flops == peak


@pytest.mark.parametrize("kind", ["NVIDIA L4", "NVIDIA B200", "TPU v7x"])
def test_an_accelerator_missing_from_the_table_has_an_unknown_peak(kind):
  peak = hardware.peak_flops_per_device(FakeDevice("gpu", kind))
  assert peak.flops is None and kind in peak.source and "PEAK_BF16_FLOPS" in peak.source


def test_nominal_cpu_peak_is_cores_times_clock_times_vector_width(tmp_path, monkeypatch):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu sse2 avx fma avx2\n"
                     "processor\t: 1\ncpu MHz\t\t: 2500.000\nflags\t\t: fpu sse2 avx fma avx2\n")
  monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
  peak = hardware.nominal_cpu_peak.__wrapped__(str(cpuinfo))
  assert peak.flops == 4 * 2.5e9 * 32
  assert "4 cores x 2.50 GHz x 32 FLOP/cycle (fma)" in peak.source
  (tmp_path / "bare").write_text("processor\t: 0\n")
  assert hardware.nominal_cpu_peak.__wrapped__(str(tmp_path / "bare")).flops is None


def test_cpu_mfu_cannot_pass_100_percent_a_matmul_stays_under_the_nominal_peak():
  """The probed peak swings with load (the quickstart once logged 95-192% MFU against it); the
  nominal one bounds what a matmul, the densest work there is, reaches on this machine."""
  nominal = hardware.nominal_cpu_peak()
  if nominal.flops is None:
    pytest.skip(nominal.source)
  assert hardware.probe_cpu_matmul_flops() < nominal.flops
