"""The estimates behind --plan: checked against hand arithmetic and measured figures."""

from __future__ import annotations

import pytest

from promptscore import sizing

QWEN_1_5B = {"hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960, "vocab_size": 151936,
             "num_attention_heads": 12, "num_key_value_heads": 2}


def test_model_shape_counts_the_weights_every_token_meets():
    shape = sizing.ModelShape.from_config(QWEN_1_5B)
    assert shape.params == pytest.approx(1.31e9, rel=0.01)  # Qwen2.5-1.5B without its embedding
    assert (shape.layers, shape.hidden) == (28, 1536)


def test_physical_limit_of_an_a100_at_1k_tokens_is_about_115_prompts_per_second():
    shape = sizing.ModelShape.from_config(QWEN_1_5B)
    est = sizing.score_estimate(1000, [1000] * 10, shape, "A100", gpus=1)
    assert 1000 / est["physical_limit_wall_s"] == pytest.approx(115, rel=0.02)
    assert est["wall_s"] > est["physical_limit_wall_s"]


def test_estimate_on_the_measured_h100_matches_the_benchmark():
    # bench/RESULTS.md (Sizing): the score job at 180,778 tokens/s on prompts of 1,000 tokens and
    # 173,042 on prompts of 300, on one H100.
    shape = sizing.ModelShape.from_config(QWEN_1_5B)
    assert sizing.score_estimate(6144, [300] * 16, shape, "H100")["tokens_per_s_per_gpu"] == pytest.approx(
        173_042, rel=0.01)
    est = sizing.score_estimate(16384, [1025] * 16, shape, "H100", gpus=1)
    assert est["tokens_per_s_per_gpu"] == pytest.approx(180_778, rel=0.02)
    assert est["rate_source"] == "measured on H100"
    two = sizing.score_estimate(16384, [1025] * 16, shape, "H100", gpus=2)
    assert two["wall_s"] == pytest.approx(est["wall_s"] / 2, rel=0.01) and two["gpu_hours"] == est["gpu_hours"]


def test_a_calibrated_rate_replaces_the_flops_model():
    shape = sizing.ModelShape.from_config(QWEN_1_5B)
    est = sizing.score_estimate(1000, [300] * 100, shape, "L20", gpus=4, calibrated_tokens_per_s=30_000)
    assert est["tokens"] == 300_000 and est["wall_s"] == pytest.approx(2.5) and "calibrated" in est["rate_source"]
    with pytest.raises(ValueError, match="unknown GPU"):
        sizing.score_estimate(1, [1], shape, "Z9")


@pytest.mark.parametrize("latency, tasks, bound",
                         [(0, 1, "cpu"), (30, 1, "latency"), (30, 8, "latency"), (30, 32, "cpu")])
def test_convert_estimate_bounds(latency, tasks, bound):
    # 4,000 files of 100 KB parsed at 80 MB/s per core: 1.25 ms of CPU per file.
    est = sizing.convert_estimate(4000, 400_000_000, list_s=1.0, parse_bytes_per_s=80e6, cores=2,
                                  tasks_per_core=tasks, request_latency_ms=latency, stream_bytes_per_s=0)
    assert est.bound == bound
    per_file = latency / 1000 + 100_000 / 80e6
    expected = 4000 / (2 * min(tasks / per_file, 800))
    assert est.read_s == pytest.approx(expected, rel=0.01)
    assert est.wall_s == pytest.approx(1.0 + est.read_s, abs=0.1)


@pytest.mark.parametrize("in_flight, bound", [(1, "latency"), (8, "latency"), (32, "cpu")])
def test_files_in_flight_overlap_latency_like_more_tasks(in_flight, bound):
    est = sizing.convert_estimate(4000, 400_000_000, list_s=0.0, parse_bytes_per_s=80e6, cores=2,
                                  tasks_per_core=1, request_latency_ms=30, stream_bytes_per_s=0,
                                  files_in_flight=in_flight)
    same = sizing.convert_estimate(4000, 400_000_000, list_s=0.0, parse_bytes_per_s=80e6, cores=2,
                                   tasks_per_core=in_flight, request_latency_ms=30, stream_bytes_per_s=0)
    assert est.bound == bound and est.files_in_flight == in_flight
    assert est.read_s == pytest.approx(same.read_s)


def test_convert_estimate_respects_the_request_rate_limit():
    est = sizing.convert_estimate(4_000_000, 400 * 10**9, list_s=300, parse_bytes_per_s=80e6, cores=10_000,
                                  tasks_per_core=8, request_latency_ms=30, max_requests_per_s=10_000)
    assert est.bound == "request_rate" and est.read_s == pytest.approx(400, rel=0.01)


def test_human_seconds():
    assert [sizing.human_seconds(s) for s in (4.2, 95, 3725)] == ["4.2s", "1m35s", "1h02m"]


def test_estimate_from_sums_equals_the_list_form():
    shape = sizing.ModelShape.from_config(QWEN_1_5B)
    lengths = [120, 900, 4096, 37, 1500]
    for calibrated in (None, 50_000.0):
        listed = sizing.score_estimate(5000, lengths, shape, "A100", gpus=3, calibrated_tokens_per_s=calibrated)
        summed = sizing.score_estimate_from_sums(5000, sum(lengths) * 1000, sum(t * t for t in lengths) * 1000,
                                                 shape, "A100", gpus=3, calibrated_tokens_per_s=calibrated)
        assert summed == listed
    # The attention term: 2 x layers x hidden x sum of squared lengths.
    est = sizing.score_estimate_from_sums(2, 3000, 1000**2 + 2000**2, shape, "H100")
    assert est["flops"] == 2 * shape.params * 3000 + 2 * 28 * 1536 * (1000**2 + 2000**2)


@pytest.mark.parametrize("device, kind", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H200", "H200"), ("NVIDIA H20", "H20"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A10", "A10"), ("Tesla T4", "T4"), ("NVIDIA L40S", "L40S"),
    ("cpu", None), ("NVIDIA GeForce RTX 4090", None), (None, None),
])
def test_gpu_kind_of_a_device_name(device, kind):
    assert sizing.gpu_kind(device) == kind
