"""benchmarks/reporting.py: the machine every benchmark section names, and its files."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import reporting  # noqa: E402

ZEN1 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 fma avx avx2 bmi2

processor\t: 1
model name\t: another CPU
"""
ZEN5 = ZEN1.replace("cpu family\t: 23", "cpu family\t: 26").replace(
    "model\t\t: 1", "model\t\t: 2").replace("avx2 bmi2", "avx2 avx512f avx512_bf16 bmi2")


def _cpuinfo(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


def test_machine_tells_apart_cpus_of_one_model_name(tmp_path):
    old = reporting.machine(_cpuinfo(tmp_path, ZEN1))
    new = reporting.machine(_cpuinfo(tmp_path, ZEN5))
    assert old["cpu"] == new["cpu"] == "AMD EPYC"  # The first processor's, not the last's.
    assert (old["cpu_family"], old["cpu_model"], old["isa"]) == ("23", "1", "AVX2")
    assert (new["cpu_family"], new["cpu_model"]) == ("26", "2")
    assert new["isa"] == "AVX512_BF16, AVX-512, AVX2"
    line = reporting.machine_line(old)
    assert line.startswith(f"AMD EPYC (family 23 model 1, AVX2; {os.cpu_count()} cores")
    assert reporting.machine_line(new) != line


def test_machine_without_cpuinfo_still_names_the_machine(tmp_path):
    info = reporting.machine(str(tmp_path / "missing"))
    assert info["cpu"] and info["isa"] == "" and info["cores"] == os.cpu_count()
    assert reporting.machine_line(info).startswith(f"{info['cpu']} ({os.cpu_count()} cores")


def test_save_json_and_append_section(tmp_path):
    path = tmp_path / "results" / "deeper" / "run.json"
    reporting.save_json(str(path), {"rate": 1.5, "rows": [1, 2]})
    assert json.loads(path.read_text()) == {"rate": 1.5, "rows": [1, 2]}

    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n")
    reporting.append_section(str(results), "Serving latency", "body\n\n| a |\n", "2026-12-07")
    reporting.append_section(None, "Skipped", "not written", "2026-12-07")
    reporting.append_section("", "Skipped", "not written", "2026-12-07")
    assert results.read_text() == "# Results\n\n## Serving latency (2026-12-07)\nbody\n\n| a |\n"
