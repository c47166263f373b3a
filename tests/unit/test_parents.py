"""Where the parents live (`sweep.parents.choose_placement`) under imposed memory caps."""

from __future__ import annotations

import pytest

from calmerge.errors import ConfigError
from calmerge.sweep.parents import FIT_FRACTION, choose_placement

GB = 10**9


def test_auto_holds_the_parents_where_they_fit():
    got = choose_placement("auto", {"cpu": 2 * GB}, free={"cpu": 10 * GB})
    assert got.where == "device" and got.nbytes == 2 * GB


def test_auto_streams_from_disk_when_ram_is_short():
    got = choose_placement("auto", {"cpu": 8 * GB}, free={"cpu": 10 * GB})
    assert got.where == "disk" and "cpu" in got.why


def test_the_margin_is_the_fit_fraction():
    need = int(FIT_FRACTION * 10 * GB)
    assert choose_placement("auto", {"cpu": need}, free={"cpu": 10 * GB}).where == "device"
    assert choose_placement("auto", {"cpu": need + 1}, free={"cpu": 10 * GB}).where == "disk"


def test_gpu_parents_go_to_pinned_host_memory_when_the_gpu_is_short():
    # 7B bf16 on a small GPU: 30 GB of parents, 20 GB free on the GPU, 100 GB of RAM
    got = choose_placement("auto", {"cuda:0": 30 * GB}, free={"cuda:0": 20 * GB, "cpu": 100 * GB})
    assert got.where == "host" and "cuda:0" in got.why
    # 27B: neither the GPU nor the RAM holds 108 GB
    got = choose_placement("auto", {"cuda:0": 108 * GB}, free={"cuda:0": 80 * GB, "cpu": 100 * GB})
    assert got.where == "disk"


def test_streamed_on_a_gpu_prefers_pinned_memory_and_on_a_cpu_disk():
    free = {"cuda:0": 100 * GB, "cpu": 100 * GB}
    assert choose_placement("streamed", {"cuda:0": GB}, free=free).where == "host"
    assert choose_placement("streamed", {"cpu": GB}, free={"cpu": 100 * GB}).where == "disk"


def test_resident_is_honoured_and_every_device_counts():
    assert choose_placement("resident", {"cpu": 9 * GB}, free={"cpu": GB}).where == "device"
    free = {"cuda:0": 100 * GB, "cuda:1": GB, "cpu": GB}
    got = choose_placement("auto", {"cuda:0": GB, "cuda:1": 10 * GB}, free=free)
    assert got.where == "disk" and "cuda:1" in got.why


def test_an_offloaded_model_reads_its_parents_from_disk():
    assert choose_placement("auto", {"cpu": 1}, offloaded=True, free={"cpu": GB}).where == "disk"
    got = choose_placement("resident", {"cpu": 1}, offloaded=True, free={"cpu": GB})
    assert got.where == "disk" and got.why.startswith("--parents resident asked, but")


def test_an_unknown_mode_is_one_line():
    with pytest.raises(ConfigError, match="--parents 'everywhere'"):
        choose_placement("everywhere", {"cpu": 1}, free={"cpu": GB})


def test_describe_names_the_placement_and_size():
    text = choose_placement("auto", {"cpu": 2 * GB}, free={"cpu": 10 * GB}).describe()
    assert "resident" in text and "2.00 GB" in text
