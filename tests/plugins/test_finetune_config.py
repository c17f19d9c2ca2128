"""Configs are data: every shipped config validates; bad ones are refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from llamahub_finetune import config as C

import llamahub
from llamahub.errors import ConfigError
from llamahub.finetune import read_config


def test_plugin_ships_configs() -> None:
    assert {"lora", "full", "lora-all-linear", "lora-long-context", "qat-int4"} <= set(C.shipped())


@pytest.mark.parametrize("name", sorted(C.shipped()))
def test_every_shipped_config_validates(name: str) -> None:
    data = read_config(C.shipped()[name])
    data.pop("context_length", None)  # the core takes these two, not the method
    data.pop("rope_scaling", None)
    cfg = C.parse(data["method"], data)
    assert cfg.model_dump()["method"] == data["method"]


@pytest.mark.parametrize(("settings", "match"), [
    ({"rnak": 4}, "rnak"), ({"rank": 0}, "rank"), ({"targets": ["qproj"]}, "not a projection"),
    ({"dropout": 1.5}, "dropout"), ({"method": "full"}, "for the 'full' method"),
])
def test_bad_settings_are_refused(settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        C.parse("lora", settings)


def test_unknown_method_and_bad_config_file(llama2_debug_folder: Path, qa_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no fine-tuning method named 'qlora'") as e:
        llamahub.finetune(llama2_debug_folder, method="qlora", data=qa_data, output="x")
    assert "lora" in (e.value.hint or "")
    bad = tmp_path / "bad.toml"
    bad.write_text("rank = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        llamahub.finetune(llama2_debug_folder, method="lora", data=qa_data, output="x", config=bad)
    with pytest.raises(ConfigError, match="cannot read the config"):
        llamahub.finetune(llama2_debug_folder, method="lora", data=qa_data, output="x",
                          config=tmp_path / "none.toml")


def test_targets_take_either_naming() -> None:
    cfg = C.parse("lora", {"targets": ["q_proj", "wv", "down_proj", "wq"]})
    assert cfg.model_dump()["targets"] == ("wq", "wv", "w2")


@pytest.mark.parametrize("name", ["lora", "full", "qat"])
def test_in_tree_methods_meet_the_contract(name: str) -> None:
    from llamahub import plugins
    from llamahub.testing import check_finetuner

    defaults = check_finetuner(plugins.finetuners()[name], llamahub.variant("llama-debug-2-chat"))
    assert defaults["method"] == name and defaults["seed"] == 0


def test_the_contract_check_catches_a_lax_method() -> None:
    from llamahub.testing import check_finetuner

    class Lax:
        name, description = "lax", "takes anything"

        def unsupported_reason(self, variant: object) -> None:
            return None

        def check_config(self, config: dict) -> dict:
            return dict(config)

        def train(self, job: object) -> None:
            raise NotImplementedError

    with pytest.raises(AssertionError, match="accepted an unknown key"):
        check_finetuner(Lax(), llamahub.variant("llama-debug-2-chat"))  # type: ignore[arg-type]
