"""turngraph installs like a library: the wheel, installed into a new virtualenv, runs a
turn from any directory, through ``SessionManager`` and through the ``turngraph`` script;
the shipped graphs are read as package data, from a zip too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What a checkout holds that a build must not see (or would write into the checkout).
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "results"
)

TURN_VIA_MANAGER = """
import anyio, engine, sessions
from sessions import SessionManager

async def main() -> None:
    async with SessionManager("memory:") as manager:
        session = await manager.get_or_create("wheel")
        result = await session.send("hello from a wheel")
        print(result.status, "|", result.reply, "|", engine.__file__)

anyio.run(main)
"""


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env(tmp: Path) -> dict[str, str]:
    """This process's environment without anything that points imports at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TURNGRAPH_HOME"] = str(tmp / "home")
    env.pop("TURNGRAPH_STORE", None)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the built wheel, a new virtualenv with it installed)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = _clean_env(tmp)
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)  # an in-tree build writes build/ there
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "-w", str(dist), str(src)], tmp, env)
    (wheel,) = dist.glob("turngraph-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    # This interpreter's pip installs into the new one (the index for dependencies, the
    # usual wheel cache for anything fetched before).
    _run([*pip, "--python", str(venv / "bin" / "python"), "install", str(wheel)], tmp, env)
    return wheel, venv


@pytest.mark.slow
def test_the_wheel_ships_the_packages_and_graphs_but_not_bench(
    installed: tuple[Path, Path],
) -> None:
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"engine", "handlers", "sessions", "graphs"}
    assert {"graphs/turn.dot", "graphs/heartbeat.dot", "graphs/tool_turn.dot"} <= set(names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    script = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "turngraph = engine.run:program" in script


@pytest.mark.slow
def test_a_session_turn_runs_from_any_directory(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, venv = installed
    python = str(venv / "bin" / "python")
    out = _run([python, "-c", TURN_VIA_MANAGER], tmp_path, _clean_env(tmp_path))
    status, reply, engine_file = (part.strip() for part in out.split("|"))
    assert (status, reply) == ("success", "echo: hello from a wheel")
    assert Path(engine_file).is_relative_to(venv), "imported from the checkout, not the wheel"


@pytest.mark.slow
def test_the_console_script_runs_a_turn_from_any_directory(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, venv = installed
    env = _clean_env(tmp_path)
    script = str(venv / "bin" / "turngraph")
    one = json.loads(_run([script, "-m", "hi there", "--json"], tmp_path, env))
    assert (one["status"], one["reply"]) == ("success", "echo: hi there")
    assert Path(one["graph"]).is_relative_to(venv)
    for turn in (1, 2):  # a stored session in $TURNGRAPH_HOME keeps its turn count
        doc = json.loads(_run([script, "-m", "again", "--session", "w", "--json"], tmp_path, env))
        assert (doc["status"], doc["turn"]) == ("success", turn)
    assert not (tmp_path / "graphs").exists() and (tmp_path / "home").is_dir()


@pytest.mark.slow
def test_bench_is_not_installed(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, venv = installed
    probe = "import importlib.util as u; print(u.find_spec('bench'))"
    out = _run([str(venv / "bin" / "python"), "-c", probe], tmp_path, _clean_env(tmp_path))
    assert out.strip() == "None"


def test_the_shipped_graphs_load_from_a_zip(tmp_path: Path) -> None:
    """A resource inside a zip is no file: graph_source gives its text instead."""
    archive = tmp_path / "graphs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((ROOT / "graphs").iterdir()):
            if path.suffix in (".py", ".dot"):
                zf.write(path, f"graphs/{path.name}")
    probe = (
        "import graphs; from engine import load_graph; "
        "g = load_graph(graphs.graph_source('turn.dot')); "
        "print(graphs.__file__, g.name, len(g.nodes))"
    )
    env = _clean_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(archive), str(ROOT)])  # the zip comes first
    where, name, nodes = _run([sys.executable, "-c", probe], tmp_path, env).split()
    assert where.startswith(str(archive)) and name == "turn" and int(nodes) > 6


def test_asking_for_a_graph_that_does_not_ship_names_it() -> None:
    from graphs import graph_source

    with pytest.raises(FileNotFoundError, match=r"no graph named 'nope\.dot'"):
        graph_source("nope.dot")
