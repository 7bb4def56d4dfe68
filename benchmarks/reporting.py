"""What every benchmark script records beside its figures: the machine, the JSON file and the
section it appends to ``benchmarks/RESULTS.md``.

Timings from different processors are not comparable, and a model name such as "AMD EPYC"
covers CPUs several times apart in matmul speed, so the machine is recorded by model name,
family/model number and vector ISA (``machine_line`` is the form RESULTS.md sections use).
"""

import datetime
import json
import os
import platform
from typing import Dict, Optional

# Vector extensions that decide TensorFlow's and torch's CPU kernels, best first.
ISA_FLAGS = (("amx_tile", "AMX"), ("avx512_bf16", "AVX512_BF16"), ("avx512f", "AVX-512"),
             ("avx2", "AVX2"))


def _cpuinfo(path: str = "/proc/cpuinfo") -> Dict[str, str]:
    """The first processor's ``key: value`` lines (empty where there is no such file)."""
    fields: Dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine(cpuinfo_path: str = "/proc/cpuinfo") -> Dict:
    """CPU (model name, family/model, ISA), cores, memory, Python, TF, load average and date."""
    cpu = _cpuinfo(cpuinfo_path)
    flags = set(cpu.get("flags", "").split())
    isa = [name for flag, name in ISA_FLAGS if flag in flags]
    info = {"cpu": cpu.get("model name") or platform.processor() or platform.machine(),
            "cpu_family": cpu.get("cpu family", ""), "cpu_model": cpu.get("model", ""),
            "isa": ", ".join(isa), "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m": round(os.getloadavg()[0], 2), "date": utc_now()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                   / 2 ** 30)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import tensorflow as tf
        info["tensorflow"] = tf.__version__
    except ImportError:
        pass
    return info


def machine_line(info: Dict) -> str:
    """``AMD EPYC (family 23 model 1, AVX2; 2 cores, 24 GiB), TF 2.16.2``."""
    cpu = info["cpu"]
    details = []
    if info.get("cpu_family"):
        details.append(f"family {info['cpu_family']} model {info['cpu_model']}")
    if info.get("isa"):
        details.append(info["isa"])
    size = f"{info['cores']} cores" + (f", {info['memory_gib']} GiB" if "memory_gib" in info
                                       else "")
    line = f"{cpu} ({', '.join(details)}; {size})" if details else f"{cpu} ({size})"
    if "tensorflow" in info:
        line += f", Python {info['python']}, TF {info['tensorflow']}"
    return line


def save_json(path: str, payload) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=float)


def append_section(path: Optional[str], title: str, body: str, date: str) -> None:
    """Appends ``## title (date)`` and ``body`` to RESULTS.md; ``path`` empty/None: nothing."""
    if not path:
        return
    with open(path, "a") as f:
        f.write(f"\n## {title} ({date})\n{body.rstrip()}\n")
