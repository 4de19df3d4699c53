"""Graph descriptions (config/*.yaml), their validation, params files, and the launch files around them."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wmpo_ros.graph import (
    GraphError,
    default_config,
    known_executables,
    launch_overrides,
    load_graph,
    parse_graph,
)

ROOT = Path(__file__).resolve().parents[4]
SETUP_PY = ROOT / "ros2_ws" / "src" / "wmpo_ros" / "setup.py"


def setup_console_scripts() -> set[str]:
    """Console scripts declared by the wmpo_ros setup.py (read without running it)."""
    tree = ast.parse(SETUP_PY.read_text())
    nodes = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", None) == "NODES" for t in n.targets))
    return set(ast.literal_eval(nodes))


def minimal(**node) -> dict:
    """A one-node graph document."""
    return {"graph": {"settings": {"cameras": ["a", "b"], "task": "lift"},
                      "nodes": {"sim": {"executable": "sim_robot_node", **node}}}}


@pytest.mark.parametrize("setup", ["sim", "robot"])
def test_shipped_graphs_are_valid_and_use_installed_executables(setup: str, tmp_path: Path) -> None:
    path = default_config(setup)
    assert path == ROOT / "config" / f"{setup}.yaml"
    graph = load_graph(path)
    scripts = setup_console_scripts()
    for node in graph.nodes.values():
        assert node.executable in scripts and node.executable in known_executables()
        assert (Path(sys.executable).parent / node.executable).exists(), f"{node.executable} is not installed"
    assert graph.node_by_executable("episode_recorder_node") is not None
    assert graph.node_by_executable("policy_node") is not None
    assert graph.node_by_executable("arm_node") is not None
    # Every node gets a standard ROS 2 params file keyed by its fully qualified name.
    files = graph.write_params_files(tmp_path)
    for name, f in files.items():
        doc = yaml.safe_load(f.read_text())
        assert list(doc) == [f"/{name}"] and doc[f"/{name}"]["ros__parameters"] == graph.nodes[name].parameters
    # Both setups record the same schema topics for every camera.
    topics = graph.node_by_executable("episode_recorder_node").parameters["topics"]
    for cam in graph.settings["cameras"]:
        assert f"camera/{cam}/image_raw" in topics and f"camera/{cam}/camera_info" in topics
    assert {"wmpo/action_chunk", "wmpo/applied_action", "wmpo/instruction", "joint_states"} <= set(topics)


def test_sim_graph_has_the_simulated_robot_and_robot_graph_the_real_one() -> None:
    sim = load_graph(default_config("sim"))
    assert sim.node_by_executable("sim_robot_node") is not None and sim.node_by_executable("camera_node") is None
    assert sim.node_by_executable("arm_node").parameters["backend"] == "sim"
    assert sim.node_by_executable("policy_node").parameters["backend"] == "scripted"
    robot = load_graph(default_config("robot"))
    assert robot.node_by_executable("sim_robot_node") is None
    assert robot.node_by_executable("arm_node").parameters["backend"] == "ros2_control"
    cams = [n for n in robot.nodes.values() if n.executable == "camera_node"]
    assert [n.parameters["name"] for n in cams] == robot.settings["cameras"]


def test_overrides_reach_every_node() -> None:
    g = load_graph(default_config("sim"), overrides=launch_overrides(policy="/pkgs/p1", cameras="front,side", task="stack"),
                   namespace="robot1")
    assert g.namespace == "robot1" and g.fully_qualified_name("arm") == "/robot1/arm"
    policy = g.node_by_executable("policy_node").parameters
    assert policy["backend"] == "vla" and policy["policy_path"] == "/pkgs/p1"
    assert policy["cameras"] == ["front", "side"]
    sim = g.node_by_executable("sim_robot_node").parameters
    assert sim["task"] == "stack" and sim["cameras"] == ["front", "side"]
    topics = g.node_by_executable("episode_recorder_node").parameters["topics"]
    assert "camera/side/image_raw" in topics and "camera/agentview/image_raw" not in topics
    cmd = g.node_command("arm", "/tmp/arm.yaml")
    assert cmd[1:] == ["--ros-args", "-r", "__node:=arm", "-r", "__ns:=/robot1", "--params-file", "/tmp/arm.yaml"]
    robot = load_graph(default_config("robot"), overrides=launch_overrides(cameras="front,wrist"))
    assert {"camera_front", "camera_wrist"} <= set(robot.nodes)


@pytest.mark.parametrize(("doc", "message"), [
    (minimal(executable="teleport_node"), "graph.nodes.sim.executable: unknown executable 'teleport_node'"),
    ({"graph": {"nodes": {"sim": {"parameters": {}}}}}, "graph.nodes.sim.executable: missing"),
    (minimal(paramters={}), "graph.nodes.sim: unknown field(s) paramters"),
    (minimal(parameters={"task": "$tsak"}), "graph.nodes.sim.parameters.task: refers to $tsak"),
    (minimal(parameters={"cameras": []}), "graph.nodes.sim.parameters.cameras: empty lists"),
    (minimal(parameters={"x": [1, "a"]}), "graph.nodes.sim.parameters.x: list items must all have one type"),
    (minimal(parameters={"x": None}), "graph.nodes.sim.parameters.x: unsupported parameter value"),
    (minimal(required="yes"), "graph.nodes.sim.required: expected true or false"),
    ({"graph": {"nodes": {}}}, "field graph.nodes is missing or empty"),
    ({"graph": {"nodes": {"bad name": {"executable": "arm_node"}}}}, "node name 'bad name' is not a valid"),
    ({"graph": {"namespace": "9lives", "nodes": {"a": {"executable": "arm_node"}}}}, "graph.namespace"),
    ({"graph": {"nodez": {}}}, "unknown field(s) graph.nodez"),
    ({"nodes": {}}, "top-level field 'graph'"),
])
def test_bad_graph_names_file_and_field(tmp_path: Path, doc: dict, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(GraphError) as err:
        load_graph(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_unreadable_or_invalid_yaml_is_a_graph_error(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="cannot read graph description"):
        load_graph(tmp_path / "missing.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("graph: {nodes: [")
    with pytest.raises(GraphError, match=f"{bad}: not valid YAML"):
        load_graph(bad)
    with pytest.raises(GraphError, match="not a valid camera name"):
        launch_overrides(cameras="front,../etc")


def test_camera_expansion_and_settings_substitution() -> None:
    g = parse_graph({"graph": {"settings": {"cameras": ["a", "b"], "size": 64}, "nodes": {
        "rec": {"executable": "episode_recorder_node", "parameters": {"topics": ["camera/{camera}/image_raw", "x"]}},
        "cam": {"executable": "camera_node", "for_each_camera": True, "parameters": {"name": "{camera}", "w": "$size"}},
    }}})
    assert g.nodes["rec"].parameters["topics"] == ["camera/a/image_raw", "camera/b/image_raw", "x"]
    assert g.nodes["cam_a"].parameters == {"name": "a", "w": 64} and g.nodes["cam_b"].parameters["name"] == "b"


LAUNCH_FILES = {"sim.launch.py": ("config/sim.yaml", None), "robot.launch.py": ("config/robot.yaml", "urdf/panda.urdf.xacro")}


def _module_constants(path: Path) -> dict:
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


@pytest.mark.parametrize("name", sorted(LAUNCH_FILES))
def test_launch_files_reference_existing_files_and_graph_api(name: str) -> None:
    path = ROOT / "launch" / name
    config, urdf = LAUNCH_FILES[name]
    consts = _module_constants(path)
    assert consts["DEFAULT_CONFIG"] == config and (ROOT / config).is_file()
    if urdf is not None:
        assert consts["URDF"] == urdf
        if not (ROOT / urdf).is_file():
            pytest.fail(f"{name} references {urdf}, which does not exist")
    tree = ast.parse(path.read_text())
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "wmpo_ros.graph"
                for a in n.names}
    import wmpo_ros.graph as graph_module

    assert imported and all(hasattr(graph_module, a) for a in imported)
    declared = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
                and getattr(c.func, "id", None) == "DeclareLaunchArgument"}
    assert {"config", "namespace", "policy", "cameras"} <= declared
    # What the launch file builds per node: launch_ros.actions.Node keyword arguments.
    for spec in load_graph(ROOT / config).launch_specs():
        assert spec["package"] == "wmpo_ros" and spec["executable"] in setup_console_scripts()
    if importlib.util.find_spec("launch") is None or importlib.util.find_spec("launch_ros") is None:
        pytest.skip("ROS 2 `launch`/`launch_ros` are not installable from PyPI; the import itself is checked "
                    "where ROS 2 is installed")
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from launch import LaunchDescription

    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription) and description.entities


def test_wmpo_cli_lists_up_and_record() -> None:
    out = subprocess.run([sys.executable, "-m", "wmpo_core.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and " up " in out.stdout.replace("\n", " ") and "record" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "wmpo_core.cli", "up", "--config", "/nonexistent.yaml"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "/nonexistent.yaml: cannot read graph description" in bad.stderr


def test_command_line_policy_and_public_keys_reach_the_policy_node(tmp_path: Path, monkeypatch) -> None:
    import argparse

    from wmpo_ros.commands import up

    parser = argparse.ArgumentParser()
    up.configure(parser)
    monkeypatch.chdir(tmp_path)
    args = parser.parse_args(["--sim", "--policy", "pkgs/v3", "--public-key", "a.pub.pem", "--public-key", "/k/b"])
    policy = up.graph_from_args(args).node_by_executable("policy_node").parameters
    assert policy["backend"] == "vla" and policy["policy_path"] == str(tmp_path / "pkgs" / "v3")
    assert policy["trusted_keys"] == f"{tmp_path / 'a.pub.pem'},/k/b"
    monkeypatch.setenv(up.PUBLIC_KEY_ENV, "/keys/one.pub.pem")
    policy = up.graph_from_args(parser.parse_args(["--policy", "/p"])).node_by_executable("policy_node").parameters
    assert policy["trusted_keys"] == "/keys/one.pub.pem"
    monkeypatch.delenv(up.PUBLIC_KEY_ENV)
    policy = up.graph_from_args(parser.parse_args(["--sim"])).node_by_executable("policy_node").parameters
    assert policy["backend"] == "scripted" and policy["trusted_keys"] == ""
