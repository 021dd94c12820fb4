"""The README documents what a newcomer and an operator need: every setting, both commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.settings import ENV_PREFIX, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", [field.name for field in dataclasses.fields(Settings)])
def test_every_setting_is_in_the_settings_table(name):
    assert f"`{ENV_PREFIX}{name.upper()}`" in README


def test_the_readme_opens_with_the_demo_and_the_test_command():
    commands = README[README.index("```sh") : README.index("```", README.index("```sh") + 5)]
    assert "./scripts/demo" in commands and ".venv/bin/python -m pytest" in commands
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in ci
