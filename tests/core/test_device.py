"""How much memory the machine can give: plans on CPU read it from the OS, a container's limit included."""

from glmtune.core import device

from conftest import MEMINFO

GiB = 2**30


def test_ram_available_counts_the_page_cache_and_leaves_out_what_processes_hold(tmp_path, monkeypatch):
    (tmp_path / "meminfo").write_text(MEMINFO, encoding="ascii")
    monkeypatch.setattr(device, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(device, "CGROUP", str(tmp_path / "no-cgroup"))
    assert device.ram_available() == (25165824 - 2097152 - 104857 - 104857) * 1024


def test_a_containers_memory_limit_caps_the_ram_available(tmp_path, monkeypatch):
    (tmp_path / "meminfo").write_text(MEMINFO, encoding="ascii")
    monkeypatch.setattr(device, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(device, "CGROUP", str(tmp_path))
    (tmp_path / "memory.max").write_text(f"{4 * GiB}\n", encoding="ascii")
    (tmp_path / "memory.current").write_text(f"{3 * GiB}\n", encoding="ascii")
    (tmp_path / "memory.stat").write_text(f"anon {2 * GiB}\nfile {GiB // 2}\n", encoding="ascii")
    assert device.ram_available() == 4 * GiB - 3 * GiB + GiB // 2  # the host's 21 GiB are not the container's
    (tmp_path / "memory.max").write_text("max\n", encoding="ascii")
    assert device.ram_available() == (25165824 - 2097152 - 104857 - 104857) * 1024
