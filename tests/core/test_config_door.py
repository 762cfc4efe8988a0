"""One config door: MemoirConfig.from_file and its one strictness behind `serve --config/--set`,
`eval --config/--set` and MEMOIR_CONFIG; every serve setting a flag; limits applied by replacing
the config; the file `memoir calibrate` writes served as is."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import httpx
import pytest

from app.service import limits
from app.settings import Settings, unknown_variables
from memoir_cli import serve as serve_cmd
from memoir_cli.evaluation import add_model_args, build_config
from memoir_core.config import MemoirConfig, checked
from memoir_core.errors import ConfigError
from tests.support.server_utils import REPO, THREADS, Server, free_port
from tests.support.tiny import make_memoir, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.timeout(180)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), "MEMOIR_THREADS": THREADS, **(env or {})}
    return subprocess.run([sys.executable, "-m", "memoir_cli.main", *args], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=timeout)


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cmd.add_parsers(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_unknown_fields_are_refused_naming_the_closest(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"tau": 0.4, "tua_growth": 0.1}))
    with pytest.raises(ConfigError, match=r"tua_growth \(did you mean tau_growth\?\)"):
        MemoirConfig.from_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        MemoirConfig.from_file(path)
    path.write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        MemoirConfig.from_file(path)
    with pytest.raises(ConfigError, match="No such file"):
        MemoirConfig.from_file(tmp_path / "missing.json")
    # MEMOIR_CONFIG: the same check, as a JSON object or as a file's path
    with pytest.raises(ValueError, match="did you mean max_steps"):
        Settings(config={"max_step": 3})
    path.write_text(json.dumps({"tau": 0.4, "lr": 0.1}))
    assert Settings(config=str(path)).config == {"tau": 0.4, "lr": 0.1}
    assert Settings(config='{"tau": 0.3}').config == {"tau": 0.3}
    # stored manifests stay tolerant: a field this version dropped (n_background) is ignored
    assert MemoirConfig.from_dict({"tau": 0.4, "n_background": 100}).tau == 0.4


def test_eval_takes_the_file_and_sets_through_the_same_door(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"tau": 0.4, "lr": 0.1, "calibration": {"far": 0.001}}))
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    config = build_config(parser.parse_args(["--config", str(path), "--set", "lr=0.2", "--set", "pool=mean"]))
    assert (config.tau, config.lr, config.pool) == (0.4, 0.2, "mean")
    with pytest.raises(ConfigError, match="--set: unknown config fields: lrr"):
        build_config(parser.parse_args(["--set", "lrr=0.2"]))


def test_every_setting_is_a_serve_flag():
    args = serve_args("--max-waiting", "7", "--no-allow-insecure", "--metrics-auth", "--log-format", "text",
                      "--set", "tau=0.41", "--cut-off-grace", "2.5", "--state-dir", "/tmp/x")
    settings = serve_cmd.settings_from(args)
    assert (settings.max_waiting, settings.allow_insecure, settings.metrics_auth, settings.log_format) == \
        (7, False, True, "text")
    assert settings.config == {"tau": 0.41} and settings.cut_off_grace == 2.5 and str(settings.state_dir) == "/tmp/x"
    assert set(Settings.model_fields) <= set(vars(serve_args()))  # one flag per setting, none left out
    with pytest.raises(SystemExit):  # a Literal's values are the flag's choices
        serve_args("--store", "disk")


def test_a_misspelt_variable_is_named_with_the_closest_setting():
    warnings = unknown_variables({"MEMOIR_MAX_BACTH": "3", "MEMOIR_PORT": "1", "MEMOIR_URL": "u",
                                  "MEMOIR_TINY_SEED": "0", "MEMOIR_QQQ": "1", "HOME": "/"})
    assert warnings == ["MEMOIR_MAX_BACTH is not a memoir setting and is ignored; did you mean MEMOIR_MAX_BATCH?",
                        "MEMOIR_QQQ is not a memoir setting and is ignored"]


def test_bad_settings_print_one_line_and_exit_2(tmp_path):
    r = cli("serve", env={"MEMOIR_PORT": "eighty", "MEMOIR_MAX_BACTH": "3"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--port / MEMOIR_PORT" in r.stderr and "'eighty'" in r.stderr
    assert "MEMOIR_MAX_BACTH is not a memoir setting and is ignored; did you mean MEMOIR_MAX_BATCH?" in r.stderr
    (tmp_path / "c.json").write_text('{"tau": 0.4, "protcet": 0}')
    r = cli("serve", "--config", str(tmp_path / "c.json"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "protcet (did you mean protect?)" in r.stderr
    (tmp_path / "edits.json").write_text('[{"src": "who runs acme", "alt": "bob"}]')
    r = cli("eval", "--data", str(tmp_path / "edits.json"), "--config", str(tmp_path / "c.json"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"memoir eval: error: config file {tmp_path / 'c.json'}: unknown config fields: protcet (did you mean "
        "protect?); the fields are MemoirConfig's (memoir_core/config.py, docs/tuning.md)"], r.stderr
    r = cli("model", "info", "--model", str(tmp_path / "no-such-model"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"memoir model info: cannot load {tmp_path / 'no-such-model'}: no such folder"]


def test_limits_replace_the_config_and_the_trainer_shares_it():
    memoir = make_memoir()
    before = memoir.config
    limits.apply(memoir, Settings(max_edit_steps=3, max_edit_seconds=5.0))
    assert (memoir.config.max_steps, memoir.config.max_edit_seconds) == (3, 5.0)
    assert memoir.trainer.config is memoir.config and before.max_steps == 30  # replaced, not changed


def test_serve_starts_with_the_calibrated_tau(tmp_path):
    """The file `memoir calibrate` writes, given to `memoir serve --config` as it is."""
    model_dir = tmp_path / "tiny"
    tok = tiny_tokenizer()
    tiny_model("llama", len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "edits.json"
    data.write_text(json.dumps([{"src": f"who is the chief executive of company {i}", "alt": "bob",
                                 "rephrase": f"the chief executive of company {i} is", "loc": f"numbers {i} two"}
                                for i in range(24)]))
    out = tmp_path / "calibration.json"
    r = cli("calibrate", "--model", str(model_dir), "--data", str(data), "--out", str(out))
    assert r.returncode == 0, r.stderr
    written = json.loads(out.read_text())
    tau = written["tau"]
    assert checked(written, "test") == {"tau": tau, "tau_growth": written["tau_growth"], "tau_ref_size": 24}
    assert tau != MemoirConfig().tau and written["calibration"]["points"]
    port = free_port()
    server = Server(["-m", "memoir_cli.main", "serve", "--model", str(model_dir), "--config", str(out),
                     "--port", str(port), "--threads", THREADS, "--store", "memory"], port=port)
    server.start(120)
    try:
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        (line,) = [x for x in metrics.splitlines() if x.startswith("memoir:model_info")]
        assert f'tau="{tau}"' in line, line
    finally:
        server.stop()
