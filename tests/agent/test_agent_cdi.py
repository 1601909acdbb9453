"""GPU discovery from CDI specs (JSON and YAML) and the --gpus / --gpu-cdi-kind flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cdi import CdiError, discover, natural_key, parse_spec, select_gpus
from agent.config import parse_args
from agent.connection import AgentConnection, Identity
from agent.messages import spec_from_start
from muster.v1 import agent_pb2

KIND = "muster.test/gpu"


def spec(kind: str = KIND, names: tuple[str, ...] = ("0", "1"), **extra) -> dict:
    return {
        "cdiVersion": "0.5.0",
        "kind": kind,
        "devices": [
            {
                "name": n,
                "containerEdits": {
                    "deviceNodes": [{"path": f"/dev/fakegpu{n}", "hostPath": "/dev/null"}],
                    "env": [f"FAKEGPU={n}"],
                },
            }
            for n in names
        ],
        **extra,
    }


NVIDIA_YAML = """\
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "1"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
- name: GPU-5e1c
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/nvidia1
containerEdits:
  deviceNodes:
  - path: /dev/nvidiactl
"""


def test_parse_json_and_yaml_specs() -> None:
    devices = parse_spec(json.dumps(spec()), "a.json")
    assert [(d.qualified, d.nodes) for d in devices] == [
        (f"{KIND}=0", ("/dev/fakegpu0",)),
        (f"{KIND}=1", ("/dev/fakegpu1",)),
    ]
    names = [d.qualified for d in parse_spec(NVIDIA_YAML, "nvidia.yaml")]
    assert names == [f"nvidia.com/gpu={n}" for n in ("1", "GPU-5e1c", "0", "all")]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{", "not valid JSON or YAML"),
        ("[]", "expected a mapping"),
        (json.dumps({"kind": "gpu", "devices": [{"name": "0"}]}), "is not VENDOR/CLASS"),
        (json.dumps({"kind": KIND, "devices": []}), "non-empty list of devices"),
        (json.dumps({"kind": KIND, "devices": [{"name": "-x"}]}), "devices[0] has no valid name"),
        (json.dumps({"kind": KIND, "devices": ["0"]}), "devices[0] has no valid name"),
    ],
)
def test_bad_specs_are_refused_with_a_reason(text: str, fragment: str) -> None:
    with pytest.raises(CdiError) as info:
        parse_spec(text, "x.json")
    assert fragment in str(info.value) and str(info.value).startswith("x.json: ")


def test_discovery_reads_both_dirs_skips_bad_files_aliases_and_all(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir(), run.mkdir()
    (etc / "nvidia.yaml").write_text(NVIDIA_YAML)
    (etc / "fake.json").write_text(json.dumps(spec(names=("10", "2", "1"))))
    (etc / "broken.json").write_text("{")
    (etc / "ignored.yml").write_text(json.dumps(spec(kind="other.io/gpu")))  # CDI reads no .yml
    (etc / "notes.txt").write_text("not a spec")
    (run / "more.json").write_text(json.dumps(spec(kind="vendor.io/gpu", names=("a",))))
    found = discover([etc, run, tmp_path / "missing"])
    assert found.of_kind("nvidia.com/gpu") == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert found.of_kind(KIND) == [f"{KIND}=1", f"{KIND}=2", f"{KIND}=10"]
    assert found.of_kind("vendor.io/gpu") == ["vendor.io/gpu=a"]
    assert found.of_kind("other.io/gpu") == []
    assert len(found.warnings) == 1 and "broken.json: not valid JSON" in found.warnings[0]
    assert natural_key("gpu2") < natural_key("gpu10")
    assert natural_key("2") < natural_key("10") < natural_key("GPU-1")


def test_gpus_flag_forms(tmp_path: Path) -> None:
    (tmp_path / "fake.json").write_text(json.dumps(spec(names=("0", "1", "2"))))
    found = discover([tmp_path])
    where = [tmp_path]
    assert select_gpus(None, KIND, found, where).devices == (f"{KIND}=0", f"{KIND}=1", f"{KIND}=2")
    assert select_gpus(None, KIND, found, where).count == 3
    assert select_gpus("2", KIND, found, where).devices == (f"{KIND}=0", f"{KIND}=1")
    assert select_gpus("0", KIND, found, where).count == 0
    listed = select_gpus(f"{KIND}=2, 0,{KIND}=2", KIND, found, where)
    assert (listed.count, listed.devices) == (2, (f"{KIND}=2", f"{KIND}=0"))
    assert select_gpus(None, "nvidia.com/gpu", found, where).count == 0
    counted = select_gpus("2", "nvidia.com/gpu", found, where)  # no spec: a count, as before
    assert (counted.count, counted.devices) == (2, ())
    assert "as a count only" in counted.note and str(tmp_path) in counted.note
    for flag, kind, fragment in (
        ("4", KIND, "--gpus 4: only 3 CDI device(s) of kind muster.test/gpu"),
        (f"{KIND}=7", KIND, f"no CDI device '{KIND}=7'"),
        ("nvidia.com/gpu=0", KIND, "no CDI device 'nvidia.com/gpu=0'"),
        ("0,,1", KIND, "empty device name"),
        ("a b", KIND, "is not a CDI device name"),
        ("-1", KIND, "gpus '-1' must not be negative"),
        ("-x", KIND, "is not a CDI device name"),
        (None, "nvidia", "--gpu-cdi-kind 'nvidia' is not VENDOR/CLASS"),
    ):
        with pytest.raises(CdiError, match=None) as info:
            select_gpus(flag, kind, found, where)
        assert fragment in str(info.value), (flag, str(info.value))


def test_flags_reach_register_and_start_reaches_the_runtime_spec(tmp_path: Path) -> None:
    (tmp_path / "fake.yaml").write_text(json.dumps(spec(names=("0", "1"))))
    base = ["--node-name", "n", "--cdi-spec-dir", str(tmp_path), "--gpu-cdi-kind", KIND]
    config = parse_args([*base, "--gpus", "1"])
    assert (config.gpus, config.gpu_devices) == (1, (f"{KIND}=0",))
    config = parse_args(base)
    assert (config.gpus, config.gpu_devices) == (2, (f"{KIND}=0", f"{KIND}=1"))
    plain = parse_args(["--node-name", "n", "--cdi-spec-dir", str(tmp_path), "--gpus", "3"])
    assert (plain.gpus, plain.gpu_devices) == (3, ())
    assert any("as a count only" in n for n in plain.gpu_notes)
    register = AgentConnection(
        "cp:1",
        Identity("n", gpus=config.gpus, gpu_devices=config.gpu_devices),
        supervisor=_Snapshot(),  # type: ignore[arg-type]
    ).register_message()
    assert (register.allocatable.gpus, list(register.gpu_devices)) == (2, list(config.gpu_devices))
    start = agent_pb2.StartContainer(
        run_id=1, role=2, replica=0, container_name="c", image="i", gpu_devices=[f"{KIND}=1"]
    )
    assert spec_from_start(start).gpu_devices == (f"{KIND}=1",)


class _Snapshot:
    def snapshot(self) -> list:
        return []


def test_bad_gpu_flags_exit_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "fake.json").write_text(json.dumps(spec(names=("0",))))
    for flags, fragment in (
        (["--gpus", "2"], "--gpus 2: only 1 CDI device(s)"),
        (["--gpus", f"{KIND}=5"], f"no CDI device '{KIND}=5'"),
        (["--gpu-cdi-kind", "bad"], "is not VENDOR/CLASS"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "agent", "--cdi-spec-dir", str(tmp_path)]
            + ["--gpu-cdi-kind", KIND] * ("--gpu-cdi-kind" not in flags)
            + flags,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], result.stderr
