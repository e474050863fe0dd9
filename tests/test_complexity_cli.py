"""``poolgate train-offline``: a real fit on a GSM8K slice writes an artifact the gateway can load; bad input is
one clear error line and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main
from routers.base import Router


def test_train_offline_writes_a_loadable_artifact_and_prints_the_pool_entry(tmp_path: Path) -> None:
    out = tmp_path / "c.router"
    result = CliRunner().invoke(main, [
        "train-offline", "--router", "complexity", "--dataset", "routellm-gsm8k", "--limit", "60",
        "--out", str(out), "--param", "mode=argmax", "--param", "aliases={strong: gpt-4-1106-preview}",
    ])
    assert result.exit_code == 0, result.output
    assert "trained complexity on routellm-gsm8k: 60 rows" in result.output
    assert f"artifact: {out.resolve()}" in result.output
    router = Router.load(out)
    assert router.name == "complexity"
    assert router.get_params()["mode"] == "argmax"
    assert router.get_params()["aliases"] == {"strong": "gpt-4-1106-preview"}


def test_train_offline_bad_input_is_one_error_line() -> None:
    runner = CliRunner()
    cases = [
        (["--router", "nope", "--dataset", "elliesql"], "unknown router 'nope'"),
        (["--router", "complexity", "--dataset", "nope"], "nope: file not found"),
        (["--router", "complexity", "--dataset", "elliesql", "--param", "colour=red"], "has no parameter 'colour'"),
        (["--router", "complexity", "--dataset", "elliesql", "--param", "novalue"], "expected KEY=VALUE"),
        (["--router", "oracle", "--dataset", "elliesql"], "for evaluation only"),
    ]
    for args, message in cases:
        result = runner.invoke(main, ["train-offline", *args])
        assert result.exit_code != 0, args
        assert message in result.output, result.output
        assert "Traceback" not in result.output
