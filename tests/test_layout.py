"""The installed layout: one import name, nothing in the current directory can shadow it, the
layering contracts hold, and no module does two jobs' worth of lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, cli_env

import llm_moments

PLANTED = "raise SystemExit('PLANTED CODE RAN')\n"


def _plant(where: Path) -> None:
    """A user's repository with its own `engine/`, `tui/` and even `llm_moments/` packages."""
    for name in ("engine", "tui", "llm_moments"):
        (where / name).mkdir()
        (where / name / "__init__.py").write_text(PLANTED)
        (where / name / "__main__.py").write_text(PLANTED)


def test_the_package_is_llm_moments_over_the_repository_folders():
    import llm_moments.engine
    import llm_moments.themes
    import llm_moments.tui

    assert Path(llm_moments.engine.__file__).parent == ROOT / "engine"
    assert Path(llm_moments.tui.__file__).parent == ROOT / "tui"
    assert Path(llm_moments.themes.__file__).parent == ROOT / "themes"
    assert llm_moments.__version__ == llm_moments.engine.__version__
    assert llm_moments.Monitor.__name__ == "Monitor"


def test_the_engine_child_never_runs_a_folder_from_the_current_directory(tmp_path):
    """The live UI starts its engine as `python -P -m llm_moments.engine`: run exactly that from a
    directory holding planted `engine/` and `llm_moments/` packages."""
    from llm_moments.tui.sources import LiveSource

    class Args:
        model, device, dtype = "tiny-gpt2", "cpu", "auto"

    argv = LiveSource(Args()).argv
    assert argv[1:4] == ["-P", "-m", "llm_moments.engine"]
    _plant(tmp_path)
    done = subprocess.run([sys.executable, *argv[1:4], "--version"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert "PLANTED" not in done.stdout + done.stderr
    assert done.stdout.strip() == f"llm-moments {llm_moments.__version__}"


def test_the_console_script_ignores_the_current_directory(tmp_path):
    moments = Path(sys.executable).parent / "moments"
    _plant(tmp_path)
    done = subprocess.run([str(moments), "--version"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=cli_env())
    assert done.returncode == 0 and "PLANTED" not in done.stdout + done.stderr


def test_a_users_own_engine_package_does_not_replace_ours(tmp_path):
    """`from llm_moments import Monitor` in a script that sits next to the user's own `engine/`."""
    _plant(tmp_path)
    (tmp_path / "llm_moments").rename(tmp_path / "not_ours")  # a script's own folder is on sys.path
    script = tmp_path / "script.py"
    script.write_text("from llm_moments import Monitor\nimport llm_moments.engine as e\nprint(e.__file__)\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(ROOT / "engine" / "__init__.py")


def test_no_import_cycles_and_no_module_over_500_lines():
    tool = ROOT.parent / "shared" / "tools" / "import_cycles.py"
    if tool.exists():
        done = subprocess.run([sys.executable, str(tool), str(ROOT), "engine", "tui"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout
    long = {str(p.relative_to(ROOT)): n for p in [*ROOT.glob("engine/**/*.py"), *ROOT.glob("tui/**/*.py")]
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}


def test_the_layering_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout
