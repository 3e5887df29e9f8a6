"""The pipeline benchmark's evaluation-phase table and the machine line every report carries."""

import torch

from benchmarks.bench_pipeline import evaluation_lines
from benchmarks.machine import cpu_description, cpu_name


def test_the_evaluation_table_gives_medians_per_batch_and_their_ratio():
    runs = [{"generation_batch_size": 8, "evaluate_s": 300.0, "domains_s": {"math": 50.0, "sql": 150.0}},
            {"generation_batch_size": 32, "evaluate_s": 150.0, "domains_s": {"math": 20.0, "sql": 90.0}},
            {"generation_batch_size": 8, "evaluate_s": 360.0, "domains_s": {"math": 70.0, "sql": 170.0}},
            {"generation_batch_size": 32, "evaluate_s": 170.0, "domains_s": {"math": 30.0, "sql": 100.0}}]
    lines = evaluation_lines("`configs/demo.yaml`", runs)
    assert "| generation batch | runs | evaluation (min) | math (s) | sql (s) |" in lines
    assert "| 8 | 2 | 5.50 | 60 | 160 |" in lines and "| 32 | 2 | 2.67 | 25 | 95 |" in lines
    assert lines[-1] == "Batch 32 vs 8: the evaluation phase takes 0.48x the time, measured side by side."


def test_the_machine_line_names_the_cpu_and_any_isa_restriction(monkeypatch):
    for name in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    plain = cpu_description()
    assert plain.startswith(cpu_name()) and f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in plain
    assert "restricted" not in plain
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert cpu_description().endswith("(restricted by MKL_ENABLE_INSTRUCTIONS=AVX2)")
