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
  sysfs = str(tmp_path / "sys")  # No cpufreq in it yet.
  peak = hardware.nominal_cpu_peak.__wrapped__(str(cpuinfo), sysfs)
  assert peak.flops == 4 * 2.5e9 * 32 and not peak.at_max_clock
  assert "4 cores x 2.50 GHz clock x 32 FLOP/cycle (fma)" in peak.source
  (tmp_path / "bare").write_text("processor\t: 0\n")
  assert hardware.nominal_cpu_peak.__wrapped__(str(tmp_path / "bare"), sysfs).flops is None

  # cpufreq's max (boost) clock, in kHz, wins over cpuinfo's current clock.
  for cpu, khz in (("cpu0", 3_500_000), ("cpu1", 3_300_000)):
    (tmp_path / "sys" / cpu / "cpufreq").mkdir(parents=True)
    (tmp_path / "sys" / cpu / "cpufreq" / "cpuinfo_max_freq").write_text(f"{khz}\n")
  peak = hardware.nominal_cpu_peak.__wrapped__(str(cpuinfo), sysfs)
  assert peak.flops == 4 * 3.5e9 * 32 and peak.at_max_clock
  assert "3.50 GHz max clock" in peak.source


def test_cpu_peak_is_raised_to_a_probed_matmul_only_where_the_boost_clock_is_hidden(monkeypatch):
  """A 2-core EPYC VM without cpufreq stated 156 GFLOP/s at its base clock and ran a matmul at
  180: MFU against the nominal figure alone would pass 100% there."""
  probes = []
  def probe():
    probes.append(1)
    return 180e9
  monkeypatch.setattr(hardware, "probe_cpu_matmul_flops", probe)
  base_clock = hardware.Peak(156e9, "nominal at 2.45 GHz", at_max_clock=False)
  monkeypatch.setattr(hardware, "nominal_cpu_peak", lambda: base_clock)
  peak = hardware.cpu_peak.__wrapped__()
  assert peak.flops == 180e9 and "probed" in peak.source and "nominal at 2.45 GHz" in peak.source

  monkeypatch.setattr(hardware, "probe_cpu_matmul_flops", lambda: 100e9)  # a loaded machine
  assert hardware.cpu_peak.__wrapped__() == base_clock

  max_clock = hardware.Peak(224e9, "nominal at 3.50 GHz max clock")
  monkeypatch.setattr(hardware, "nominal_cpu_peak", lambda: max_clock)
  probes.clear()
  monkeypatch.setattr(hardware, "probe_cpu_matmul_flops", probe)
  assert hardware.cpu_peak.__wrapped__() == max_clock and not probes
