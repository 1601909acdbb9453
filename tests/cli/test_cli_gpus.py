"""`resources.gpu` as Tyger files write it (a quantity string, "1"): read by the
CLI's spec files, sent through the API as a number, equal to the same count
written as a number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muster_cli.specfile import SpecError, codespec_from_dict, run_from_dict
from tests.conftest import run_cli


def test_spec_files_take_gpu_counts_as_numbers_or_quantity_strings() -> None:
    for written, count in ((1, 1), ("1", 1), ("2", 2), (" 3 ", 3), ("1.0", 1), (0, 0)):
        doc = {"image": "x", "resources": {"gpu": written}}
        assert codespec_from_dict(doc).resources.gpu == count, written
    run = run_from_dict(
        {"job": {"codespec": {"image": "x", "resources": {"gpu": "2"}}, "nodePool": "gpu"}}
    )
    assert run.job.codespec.inline.resources.gpu == 2
    for bad, fragment in (
        ("0.5", "'0.5' is not a whole number"),
        ("one", "'one' is not a whole number"),
        ([1], "expected a whole number, got list"),
        (True, "expected a whole number, got bool"),
        ("-1", "-1 is out of range"),
    ):
        with pytest.raises(SpecError, match=fragment):
            codespec_from_dict({"image": "x", "resources": {"gpu": bad}})


def test_a_quantity_string_and_a_number_are_the_same_codespec(cp_process, tmp_path: Path) -> None:
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text('kind: worker\nimage: localhost/x:1\nresources:\n  gpu: "1"\n')
    plain = tmp_path / "plain.yaml"
    plain.write_text("kind: worker\nimage: localhost/x:1\nresources:\n  gpu: 1\n")
    assert run_cli("codespec", "create", "g", "-f", str(quoted), server=cp_process).stdout == "1\n"
    assert run_cli("codespec", "create", "g", "-f", str(plain), server=cp_process).stdout == "1\n"
    flag = run_cli(
        "codespec", "create", "g", "-k", "worker", "--image", "localhost/x:1", "--gpu", "1",
        server=cp_process,
    )  # fmt: skip
    assert flag.stdout == "1\n"
    shown = json.loads(
        run_cli("codespec", "show", "g", "-o", "json", server=cp_process, check=True).stdout
    )
    assert shown["resources"]["gpu"] == "1"  # a quantity string, as Tyger prints it
    half = tmp_path / "half.yaml"
    half.write_text('image: localhost/x:1\nresources:\n  gpu: "0.5"\n')
    bad = run_cli("codespec", "create", "h", "-f", str(half), server=cp_process)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        f"error: {half}: resources.gpu: '0.5' is not a whole number"
    ]
