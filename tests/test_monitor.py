"""fastgan.ResourceMonitor: timing and throughput on the CPU, GPU arithmetic against a fake
``pynvml`` module (the real NVML path runs in the ``gpu`` test on a lent GPU)."""
import json
import os
import statistics
import sys
import threading
import time
import types

import pytest
import torch

from fastgan import ResourceMonitor, nvml
from fastgan import monitor as fmonitor

THREAD = fmonitor._THREAD_NAME


def _sampler_threads():
    return [t for t in threading.enumerate() if t.name == THREAD and t.is_alive()]


# ----------------------------------------------------------------------------- a fake NVML

class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """A stand-in for the ``pynvml`` module simulating GPUs whose power rises linearly in time.

    Device i draws ``base_w[i] + slope * (t - t0)`` watts; its energy counter is the exact
    integral of that (mJ). Every reading the monitor takes is logged so that the tests can
    recompute the aggregates.
    """

    def __init__(self, base_w=(100.0,), slope=200.0, counter=True, power=True, counter_frozen=False,
                 init_error=None):
        self.base_w = list(base_w)
        self.slope = slope
        self.counter = counter if isinstance(counter, (list, tuple)) else [counter] * len(self.base_w)
        self.power = power
        self.counter_frozen = counter_frozen
        self.init_error = init_error
        self.t0 = time.perf_counter()
        n = len(self.base_w)
        self.log = {i: {"power": [], "util": [], "mem": [], "clock": [], "temp": [], "energy": []} for i in range(n)}
        self.calls = 0

    def _dev(self, h):
        return h[1]

    def watts(self, i, t):
        return self.base_w[i] + self.slope * (t - self.t0)

    def joules(self, i, t):
        dt = t - self.t0
        return self.base_w[i] * dt + 0.5 * self.slope * dt * dt

    def module(self):
        m = types.ModuleType("pynvml")
        m.NVMLError = FakeNVMLError
        m.NVML_CLOCK_SM = 1
        m.NVML_TEMPERATURE_GPU = 0

        def nvmlInit():
            if self.init_error:
                raise FakeNVMLError(self.init_error)

        def handle(i):
            if not 0 <= i < len(self.base_w):
                raise FakeNVMLError("Invalid Argument")
            return ("fake-handle", i)

        def power(h):
            i = self._dev(h)
            if not self.power:
                raise FakeNVMLError("Not Supported")
            w = self.watts(i, time.perf_counter())
            self.log[i]["power"].append(w)
            return int(round(w * 1000))  # mW, as NVML reports it

        def energy(h):
            i = self._dev(h)
            if not self.counter[i]:
                raise FakeNVMLError("Not Supported")
            t = self.t0 if self.counter_frozen else time.perf_counter()
            mj = 10_000_000 + int(self.joules(i, t) * 1000)
            self.log[i]["energy"].append(mj)
            return mj

        def util(h):
            i = self._dev(h)
            self.calls += 1
            g = 40 + (self.calls * 7) % 60
            self.log[i]["util"].append(g)
            return types.SimpleNamespace(gpu=g, memory=g // 2)

        def mem(h):
            i = self._dev(h)
            used = (1 + i) * 2**30 + len(self.log[i]["mem"]) * 2**20
            self.log[i]["mem"].append(used)
            return types.SimpleNamespace(used=used, total=80 * 2**30, free=80 * 2**30 - used)

        def clock(h, kind):
            assert kind == 1
            i = self._dev(h)
            c = 1500 + 100 * (len(self.log[i]["clock"]) % 3)
            self.log[i]["clock"].append(c)
            return c

        def temp(h, sensor):
            assert sensor == 0
            i = self._dev(h)
            c = 40 + len(self.log[i]["temp"])
            self.log[i]["temp"].append(c)
            return c

        m.nvmlInit = nvmlInit
        m.nvmlShutdown = lambda: None
        m.nvmlDeviceGetCount = lambda: len(self.base_w)
        m.nvmlDeviceGetHandleByIndex = handle
        m.nvmlDeviceGetName = lambda h: f"Fake GPU {self._dev(h)}".encode()
        m.nvmlDeviceGetPowerUsage = power
        m.nvmlDeviceGetTotalEnergyConsumption = energy
        m.nvmlDeviceGetUtilizationRates = util
        m.nvmlDeviceGetMemoryInfo = mem
        m.nvmlDeviceGetClockInfo = clock
        m.nvmlDeviceGetTemperature = temp
        m.nvmlSystemGetDriverVersion = lambda: "999.99"
        return m


@pytest.fixture
def fresh_nvml(monkeypatch):
    """Swap ``pynvml`` in sys.modules; fastgan.nvml re-imports it. Torch is made to report no CUDA
    so that explicit device ints address the fake NVML devices on any machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def install(module):
        monkeypatch.setitem(sys.modules, "pynvml", module)
        nvml.reset()

    yield install
    nvml.reset()


@pytest.fixture
def fake_gpu(fresh_nvml):
    def make(**kw):
        fake = FakeNVML(**kw)
        fresh_nvml(fake.module())
        return fake

    return make


def _loop(mon, steps=6, sleep=0.02, n=4):
    for _ in range(steps):
        time.sleep(sleep)
        mon.step(n_images=n)


# ----------------------------------------------------------------------------- CPU

def test_cpu_loop_plausible():
    sleep, steps, batch = 0.02, 5, 8
    a = torch.randn(64, 64)
    marks = []
    with ResourceMonitor() as mon:
        marks.append(time.perf_counter())
        for _ in range(steps):
            for _ in range(3):
                a = torch.tanh(a @ a)
            time.sleep(sleep)
            mon.step(n_images=batch)
            marks.append(time.perf_counter())
    r = mon.report()
    ours = sorted((b - a) * 1e3 for a, b in zip(marks, marks[1:]))
    assert r["schema"] == 1 and r["complete"] is True
    assert r["wall_s"] >= steps * sleep
    assert r["steps"] == steps and r["images"] == steps * batch
    assert r["images_per_s"] == pytest.approx(r["images"] / r["wall_s"], rel=1e-12)
    sm = r["step_ms"]
    assert sm["count"] == steps
    assert sleep * 1e3 <= sm["p10"] <= sm["median"] <= sm["p90"]
    assert sm["median"] == pytest.approx(statistics.median(ours), abs=5.0)  # what the loop itself timed
    assert sm["median"] < sleep * 1e3 + 1000  # near the sleep (the CPU is shared: generous)
    assert r["cpu_s"] > 0
    assert r["peak_rss_bytes"] > 1 << 20
    json.dumps(r, allow_nan=False)
    if not torch.cuda.is_available():
        assert r["devices"] == []
        assert r["cuda_s"] is None
        assert "no CUDA device" in r["gpu_unavailable_reason"]
        assert r["energy_j"] is None and r["joules_per_image"] is None and r["energy_source"] is None
        assert r["energy_unavailable_reason"]
        assert "energy n/a: no CUDA device" in mon.summary()


def test_step_ms_first_step_from_enter_and_percentiles():
    with ResourceMonitor(devices=[]) as mon:
        time.sleep(0.03)
        mon.step()
        time.sleep(0.01)
        mon.step()
        mon.step()
    r = mon.report()
    assert r["steps"] == 3 and r["images"] == 0 and r["images_per_s"] is None
    assert r["step_ms"]["count"] == 3
    assert r["step_ms"]["p90"] >= 10 + 0.8 * (30 - 10)  # interpolated between the 10 ms and 30 ms steps
    with ResourceMonitor(devices=[]) as mon:
        time.sleep(0.03)
        mon.step()
    assert mon.report()["step_ms"]["median"] >= 30  # the first step counts from enter
    assert r["gpu_unavailable_reason"] == "no GPU devices requested (devices=[])"
    assert fmonitor._percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert fmonitor._percentile([0.0, 10.0], 0.1) == pytest.approx(1.0)
    assert fmonitor._percentile([5.0], 0.9) == 5.0
    assert fmonitor._percentile([], 0.5) is None


def test_no_steps_report():
    with ResourceMonitor(devices=[]) as mon:
        pass
    r = mon.report()
    assert r["steps"] == 0 and r["step_ms"] == {"median": None, "p10": None, "p90": None, "count": 0}
    assert "no steps" in mon.summary()


# ----------------------------------------------------------------------------- NVML missing or failing

def test_nvml_not_importable(fresh_nvml):
    fresh_nvml(None)  # sys.modules["pynvml"] = None makes `import pynvml` raise ImportError
    ok, why = nvml.status()
    assert not ok and "not importable" in why
    with ResourceMonitor(devices=[0]) as mon:
        _loop(mon, steps=2, sleep=0.005)
    r = mon.report()
    assert "nvidia-ml-py is not importable" in r["gpu_unavailable_reason"]
    assert r["energy_j"] is None and r["energy_source"] is None
    assert "not importable" in r["energy_unavailable_reason"]
    assert r["devices"] == []
    assert r["wall_s"] > 0 and r["cpu_s"] >= 0 and r["peak_rss_bytes"] > 0
    s = mon.summary()
    assert "energy n/a:" in s and "\n" not in s


def test_nvml_init_fails(fresh_nvml):
    fake = FakeNVML(init_error="Driver Not Loaded\nsecond line")
    fresh_nvml(fake.module())
    with ResourceMonitor(devices=[0]) as mon:
        mon.step(n_images=1)
    r = mon.report()
    assert "Driver Not Loaded" in r["gpu_unavailable_reason"]
    assert "NVML did not initialise" in r["gpu_unavailable_reason"]
    assert r["energy_j"] is None
    assert _sampler_threads() == []
    assert "\n" not in mon.summary()


# ----------------------------------------------------------------------------- fake GPU

def _check_aggregates(dev, log):
    assert dev["samples"] == len(log["power"]) == len(log["util"]) >= 3
    assert dev["mean_power_w"] == pytest.approx(statistics.fmean(log["power"]), abs=1e-3)
    assert dev["max_power_w"] == pytest.approx(max(log["power"]), abs=1e-3)
    assert dev["mean_util_pct"] == pytest.approx(statistics.fmean(log["util"]))
    assert dev["max_mem_used_bytes"] == max(log["mem"])
    assert dev["mean_sm_clock_mhz"] == pytest.approx(statistics.fmean(log["clock"]))
    assert dev["max_temp_c"] == max(log["temp"])


def test_fake_gpu_counter_path_two_devices(fake_gpu):
    fake = fake_gpu(base_w=(100.0, 250.0))
    with ResourceMonitor(devices=[0, 1], interval_s=0.01) as mon:
        assert len(_sampler_threads()) == 1
        _loop(mon, steps=6, sleep=0.02, n=16)
    r = mon.report()
    assert r["energy_source"] == "counter"
    assert [d["index"] for d in r["devices"]] == [0, 1]
    assert [d["name"] for d in r["devices"]] == ["Fake GPU 0", "Fake GPU 1"]
    for i, dev in enumerate(r["devices"]):
        e = fake.log[i]["energy"]
        assert len(e) == 2  # read at enter and at exit only
        assert dev["energy_source"] == "counter"
        assert dev["energy_j"] == pytest.approx((e[1] - e[0]) / 1e3)
        # the counter agrees with the power the device was drawing over the wall time
        assert dev["energy_j"] == pytest.approx(dev["mean_power_w"] * r["wall_s"], rel=0.1)
        _check_aggregates(dev, fake.log[i])
        assert dev["max_mem_allocated_bytes"] is None and dev["cuda_s"] is None
        assert dev["error"] is None
    assert r["energy_j"] == pytest.approx(sum(d["energy_j"] for d in r["devices"]))
    assert r["joules_per_image"] == pytest.approx(r["energy_j"] / 96)
    assert r["devices"][1]["energy_j"] > r["devices"][0]["energy_j"]
    assert "NVML readings only" in r["gpu_unavailable_reason"]
    assert r["energy_unavailable_reason"] is None
    s = mon.summary()
    assert "J/image (" in s and "counter" in s and "GPU used" in s and "\n" not in s
    json.dumps(r, allow_nan=False)


def test_fake_gpu_integrated_power_path(fake_gpu):
    fake = fake_gpu(base_w=(150.0,), counter=False)
    t_enter = time.perf_counter()
    with ResourceMonitor(devices=0, interval_s=0.01) as mon:
        _loop(mon, steps=5, sleep=0.02, n=2)
    t_exit = time.perf_counter()
    r = mon.report()
    dev = r["devices"][0]
    assert r["energy_source"] == dev["energy_source"] == "integrated_power"
    # the power is linear in time, so the trapezoid rule is exact over the sampled span
    p = fake.log[0]["power"]
    span = (p[-1] - p[0]) / fake.slope
    assert dev["energy_j"] == pytest.approx(0.5 * (p[0] + p[-1]) * span, rel=0.02)
    assert span <= t_exit - t_enter
    assert span == pytest.approx(r["wall_s"], rel=0.1)
    _check_aggregates(dev, fake.log[0])
    assert r["joules_per_image"] == pytest.approx(r["energy_j"] / 10)


def test_fake_gpu_frozen_counter_falls_back_to_power(fake_gpu):
    fake_gpu(base_w=(80.0,), counter_frozen=True)
    with ResourceMonitor(devices=[0], interval_s=0.01) as mon:
        _loop(mon, steps=3, sleep=0.01)
    assert mon.report()["energy_source"] == "integrated_power"


def test_fake_gpu_mixed_sources(fake_gpu):
    fake_gpu(base_w=(100.0, 100.0), counter=[True, False])
    with ResourceMonitor(devices=[0, 1], interval_s=0.01) as mon:
        _loop(mon, steps=3, sleep=0.01)
    r = mon.report()
    assert [d["energy_source"] for d in r["devices"]] == ["counter", "integrated_power"]
    assert r["energy_source"] == "integrated_power"  # the least exact source present
    assert r["energy_j"] == pytest.approx(sum(d["energy_j"] for d in r["devices"]))


def test_fake_gpu_no_energy_at_all(fake_gpu):
    fake_gpu(base_w=(100.0,), counter=False, power=False)
    with ResourceMonitor(devices=[0], interval_s=0.01) as mon:
        _loop(mon, steps=2, sleep=0.01)
    r = mon.report()
    assert r["energy_j"] is None and r["energy_source"] is None
    assert "no energy counter" in r["energy_unavailable_reason"]
    dev = r["devices"][0]
    assert dev["mean_power_w"] is None and dev["mean_util_pct"] is not None
    assert "energy n/a: device 0: no energy counter" in mon.summary()


def test_fake_gpu_missing_device(fake_gpu):
    fake_gpu(base_w=(100.0,))
    with pytest.raises(ValueError, match="does not exist"):
        with ResourceMonitor(devices=[3]):
            pass
    assert _sampler_threads() == []


def test_live_report_inside_block(fake_gpu):
    fake_gpu(base_w=(100.0,))
    with ResourceMonitor(devices=[0], interval_s=0.01) as mon:
        _loop(mon, steps=2, sleep=0.02)
        live = mon.report()
        assert live["complete"] is False and live["steps"] == 2
        assert live["devices"][0]["energy_j"] > 0
        _loop(mon, steps=1, sleep=0.01)
    assert mon.report()["complete"] is True and mon.report()["steps"] == 3


# ----------------------------------------------------------------------------- the sampler thread

def test_sampler_thread_stops_on_exit(fake_gpu):
    fake_gpu(base_w=(100.0,))
    mon = ResourceMonitor(devices=[0], interval_s=0.005)
    with mon:
        thread = mon._thread
        assert thread.is_alive() and thread.daemon
        time.sleep(0.05)
    assert not thread.is_alive() and mon._thread is None
    assert _sampler_threads() == []
    n = mon.report()["devices"][0]["samples"]
    time.sleep(0.03)
    assert mon.report()["devices"][0]["samples"] == n  # nothing samples after exit


def test_sampler_thread_stops_on_exception(fake_gpu):
    fake_gpu(base_w=(100.0,))
    mon = ResourceMonitor(devices=[0], interval_s=0.005)
    with pytest.raises(KeyError, match="boom"):
        with mon:
            thread = mon._thread
            mon.step(n_images=3)
            raise KeyError("boom")
    assert not thread.is_alive() and _sampler_threads() == []
    r = mon.report()
    assert r["complete"] is True and r["images"] == 3 and r["energy_source"] == "counter"


def test_no_thread_without_gpu():
    with ResourceMonitor(devices=[]) as mon:
        assert mon._thread is None and _sampler_threads() == []


# ----------------------------------------------------------------------------- API rules

@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True, torch.tensor(1.0)])
def test_step_rejects_bad_counts(bad):
    with ResourceMonitor(devices=[]) as mon:
        with pytest.raises(ValueError, match="n_images"):
            mon.step(n_images=bad)
    assert mon.report()["steps"] == 0


def test_step_accepts_integer_likes():
    import numpy as np

    with ResourceMonitor(devices=[]) as mon:
        mon.step(n_images=np.int64(3))
        mon.step(n_images=torch.tensor(2))
        mon.step(5)
    assert mon.report()["images"] == 10


def test_misuse_errors():
    mon = ResourceMonitor(devices=[])
    with pytest.raises(RuntimeError, match="before the monitor was entered"):
        mon.report()
    with pytest.raises(RuntimeError, match="before the monitor was entered"):
        mon.summary()
    with pytest.raises(RuntimeError, match="outside"):
        mon.step(1)
    with mon:
        with pytest.raises(RuntimeError, match="already running"):
            with mon:
                pass
        mon.step(1)  # still running after the refused nesting
    with pytest.raises(RuntimeError, match="outside"):
        mon.step(1)
    for bad in (0, -0.1, float("nan"), "fast"):
        with pytest.raises(ValueError, match="interval_s"):
            ResourceMonitor(interval_s=bad)
    for bad in (["cpu"], [-1], [True], "cpu", 3.5):
        with pytest.raises(ValueError):
            ResourceMonitor(devices=bad)


def test_reentering_resets():
    mon = ResourceMonitor(devices=[])
    with mon:
        mon.step(4)
        mon.step(4)
    first = mon.report()
    with mon:
        time.sleep(0.01)
        mon.step(1)
    second = mon.report()
    assert (first["steps"], first["images"]) == (2, 8)
    assert (second["steps"], second["images"]) == (1, 1)
    assert second["step_ms"]["count"] == 1


def test_two_monitors_nest():
    with ResourceMonitor(devices=[]) as outer:
        outer.step(1)
        with ResourceMonitor(devices=[]) as inner:
            inner.step(2)
        outer.step(1)
    assert outer.report()["images"] == 2 and inner.report()["images"] == 2


def test_rank_from_torch_distributed(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    with ResourceMonitor(devices=[]) as mon:
        pass
    r = mon.report()
    assert (r["rank"], r["world_size"]) == (3, 4)


def test_report_is_a_copy():
    with ResourceMonitor(devices=[]) as mon:
        mon.step(1)
    mon.report()["steps"] = 99
    assert mon.report()["steps"] == 1


# ----------------------------------------------------------------------------- output

def test_to_json_atomic(tmp_path, monkeypatch):
    with ResourceMonitor(devices=[]) as mon:
        mon.step(2)
    path = tmp_path / "sub" / "run.json"
    assert mon.to_json(path) == str(path)
    assert json.loads(path.read_text()) == mon.report()
    assert os.listdir(path.parent) == ["run.json"]

    # a failure while writing leaves the previous file intact and no temporary file behind
    before = path.read_text()

    def broken_dump(obj, f, **kw):
        f.write('{"half": ')
        raise OSError("disk full")

    monkeypatch.setattr(fmonitor.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        mon.to_json(path)
    assert path.read_text() == before
    assert os.listdir(path.parent) == ["run.json"]


def test_summary_is_one_line():
    with ResourceMonitor(devices=[]) as mon:
        for _ in range(3):
            mon.step(4)
    s = mon.summary()
    assert "\n" not in s
    assert "images/s" in s and "energy n/a:" in s and "peak mem" in s and "median step" in s


# ----------------------------------------------------------------------------- real GPU

@pytest.mark.gpu
def test_real_gpu_matmul_loop():
    nvml.reset()
    if not nvml.status()[0]:
        pytest.skip(f"NVML unavailable: {nvml.status()[1]}")
    a = torch.randn(4096, 4096, device="cuda")
    with ResourceMonitor(interval_s=0.05, sync_steps=True) as mon:
        end = time.perf_counter() + 1.5
        while time.perf_counter() < end:
            for _ in range(8):
                b = a @ a
            mon.step(n_images=64)
    del b
    r = mon.report()
    print(mon.summary())
    dev = r["devices"][0]
    assert r["gpu_unavailable_reason"] is None, r["gpu_unavailable_reason"]
    assert r["energy_source"] == "counter" and r["energy_j"] > 0
    assert r["cuda_s"] > 0 and r["cuda_s"] == pytest.approx(r["wall_s"], rel=0.2)
    assert dev["max_mem_allocated_bytes"] >= 3 * 4096 * 4096 * 4
    assert dev["max_mem_used_bytes"] >= dev["max_mem_allocated_bytes"]
    assert dev["samples"] >= 5 and dev["mean_power_w"] > 0 and dev["mean_sm_clock_mhz"] > 0
    # the counter and the integrated power agree roughly (power readings are driver-averaged)
    assert dev["energy_j"] == pytest.approx(dev["mean_power_w"] * r["wall_s"], rel=0.5)
    assert r["joules_per_image"] == pytest.approx(r["energy_j"] / r["images"])
    # torch's ordinal was matched to NVML by UUID
    key = nvml._uuid_key(torch.cuda.get_device_properties(dev["index"]).uuid)
    assert len(key) == 32, torch.cuda.get_device_properties(dev["index"]).uuid
    pynvml = sys.modules["pynvml"]
    h = pynvml.nvmlDeviceGetHandleByIndex(dev["nvml_index"])
    assert nvml._uuid_key(pynvml.nvmlDeviceGetUUID(h)) == key
