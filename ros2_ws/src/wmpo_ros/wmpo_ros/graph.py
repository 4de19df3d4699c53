"""One description of the ROS 2 graph, read by the launch files and by `wmpo up` / `wmpo record`.

A graph file (YAML) looks like::

    graph:
      namespace: ""                      # "" = global namespace
      settings:                          # values shared by nodes, overridable from the command line
        task: lift
        cameras: [agentview, wrist]
      nodes:                             # started in this order, stopped in reverse
        sim_robot:
          executable: sim_robot_node     # a console script of the wmpo_ros package
          parameters:
            task: $task                  # "$name" = the value of settings.name
            cameras: $cameras
        recorder:
          executable: episode_recorder_node
          parameters:
            topics: ["camera/{camera}/image_raw", joint_states]   # "{camera}" = one entry per camera
        camera:
          executable: camera_node
          for_each_camera: true          # one node per camera, named camera_<camera>
          parameters: {name: "{camera}"}

The setting `policy` ("scripted" or a policy package path) also defines `policy_backend`
("scripted" or "vla") and `policy_package` ("" or the path) for the policy node.
This module imports no rclpy and no launch, so it is usable (and testable) everywhere.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "wmpo_ros"
# Used only when the package metadata is missing (e.g. running from a colcon build tree).
FALLBACK_EXECUTABLES = ("sim_robot_node", "camera_node", "policy_node", "arm_node", "episode_recorder_node")
NODE_FIELDS = {"executable", "parameters", "remappings", "required", "for_each_camera"}
GRAPH_FIELDS = {"namespace", "settings", "nodes"}
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_NAMESPACE_RE = re.compile(r"^(/?[A-Za-z][A-Za-z0-9_]*)*/?$")
_SETTING_REF_RE = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


class GraphError(ValueError):
    """A graph description is invalid; the message names the file and the field."""


@dataclass
class GraphNode:
    """One node of the graph: its name, the wmpo_ros console script and its parameters."""

    name: str
    executable: str
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: dict[str, str] = field(default_factory=dict)
    required: bool = True


@dataclass
class Graph:
    """A validated graph description with settings already substituted into node parameters."""

    source: Path
    namespace: str
    settings: dict[str, Any]
    nodes: dict[str, GraphNode]

    def node_by_executable(self, executable: str) -> GraphNode | None:
        """The first node running `executable`, or None."""
        return next((n for n in self.nodes.values() if n.executable == executable), None)

    def fully_qualified_name(self, node_name: str) -> str:
        """`/namespace/node` as ROS 2 resolves it (used for params files and service names)."""
        ns = self.namespace.strip("/")
        return f"/{ns}/{node_name}" if ns else f"/{node_name}"

    def params_document(self, node_name: str) -> dict[str, Any]:
        """The standard ROS 2 params file content (`<fqn>: {ros__parameters: ...}`) for one node."""
        node = self.nodes[node_name]
        return {self.fully_qualified_name(node_name): {"ros__parameters": copy.deepcopy(node.parameters)}}

    def write_params_files(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write one `<node>.params.yaml` per node into `directory`; returns node name -> path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for name in self.nodes:
            path = out / f"{name}.params.yaml"
            path.write_text(yaml.safe_dump(self.params_document(name), sort_keys=False))
            paths[name] = path
        return paths

    def node_command(self, node_name: str, params_file: str | os.PathLike) -> list[str]:
        """The command line starting one node as its own process (console script, ROS args)."""
        node = self.nodes[node_name]
        script = Path(sys.executable).parent / node.executable
        if script.exists():
            cmd = [str(script)]
        else:  # not installed as a script (source tree): run the module's main() directly
            cmd = [sys.executable, "-c", f"import sys; from {PACKAGE}.{node.executable} import main; sys.exit(main())"]
        cmd += ["--ros-args", "-r", f"__node:={node_name}"]
        if self.namespace.strip("/"):
            cmd += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        for src, dst in node.remappings.items():
            cmd += ["-r", f"{src}:={dst}"]
        cmd += ["--params-file", str(params_file)]
        return cmd

    def launch_specs(self) -> list[dict[str, Any]]:
        """Keyword arguments for one `launch_ros.actions.Node` per graph node."""
        return [
            {
                "package": PACKAGE,
                "executable": n.executable,
                "name": n.name,
                "namespace": self.namespace.strip("/"),
                "parameters": [copy.deepcopy(n.parameters)],
                "remappings": list(n.remappings.items()),
                "output": "screen",
            }
            for n in self.nodes.values()
        ]


def known_executables() -> tuple[str, ...]:
    """The console scripts the wmpo_ros package installs (the executables a graph may name)."""
    try:
        eps = distribution(PACKAGE).entry_points
    except PackageNotFoundError:
        return FALLBACK_EXECUTABLES
    scripts = tuple(sorted(ep.name for ep in eps if ep.group == "console_scripts"))
    return scripts or FALLBACK_EXECUTABLES


def default_config(setup: str) -> Path:
    """The graph file shipped for a setup (`sim` or `robot`): `<repo>/config/<setup>.yaml`."""
    candidates = [Path(__file__).resolve().parents[4] / "config" / f"{setup}.yaml"]
    share = os.environ.get("AMENT_PREFIX_PATH", "")
    candidates += [Path(p) / "share" / "wmpo" / "config" / f"{setup}.yaml" for p in share.split(os.pathsep) if p]
    for c in candidates:
        if c.is_file():
            return c
    raise GraphError(f"no graph description for setup {setup!r}; looked in: {', '.join(map(str, candidates))}")


def _derive_settings(settings: dict[str, Any]) -> None:
    """Settings computed from others: the policy backend and package from `policy`."""
    policy = settings.get("policy")
    if isinstance(policy, str) and policy:
        scripted = policy == "scripted"
        settings["policy_backend"] = "scripted" if scripted else "vla"
        settings["policy_package"] = "" if scripted else policy


def _per_camera(value: Any, camera: str) -> Any:
    """Replace "{camera}" in every string of a parameter tree by one camera name."""
    if isinstance(value, str):
        return value.replace("{camera}", camera)
    if isinstance(value, list):
        return [_per_camera(v, camera) for v in value]
    if isinstance(value, dict):
        return {k: _per_camera(v, camera) for k, v in value.items()}
    return value


def _substitute(value: Any, settings: Mapping[str, Any], where: str) -> Any:
    """Replace "$name" by settings[name] and expand "{camera}" list entries per camera."""
    if isinstance(value, str):
        m = _SETTING_REF_RE.match(value)
        if m:
            key = m.group(1)
            if key not in settings:
                raise GraphError(f"{where}: refers to ${key} but graph.settings has no field {key!r}")
            return copy.deepcopy(settings[key])
        return value
    if isinstance(value, list):
        out: list[Any] = []
        for i, item in enumerate(value):
            if isinstance(item, str) and "{camera}" in item:
                cameras = settings.get("cameras")
                if not isinstance(cameras, list) or not cameras:
                    raise GraphError(f"{where}[{i}]: uses {{camera}} but graph.settings.cameras is not a non-empty list")
                out.extend(item.replace("{camera}", str(c)) for c in cameras)
            else:
                out.append(_substitute(item, settings, f"{where}[{i}]"))
        return out
    if isinstance(value, dict):
        return {k: _substitute(v, settings, f"{where}.{k}") for k, v in value.items()}
    return value


def _check_parameter(value: Any, where: str) -> None:
    """ROS 2 parameters are scalars or non-empty homogeneous lists of scalars."""
    scalar = (bool, int, float, str)
    if isinstance(value, scalar):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_parameter(v, f"{where}.{k}")
        return
    if isinstance(value, list):
        if not value:
            raise GraphError(f"{where}: empty lists have no ROS 2 parameter type; leave the parameter out instead")
        kinds = {bool if isinstance(v, bool) else (float if isinstance(v, float) else type(v)) for v in value}
        if not all(issubclass(k, scalar) for k in kinds):
            raise GraphError(f"{where}: list items must be bool, int, float or string, got {value!r}")
        if len(kinds) > 1 and kinds != {int, float}:
            raise GraphError(f"{where}: list items must all have one type, got {sorted(k.__name__ for k in kinds)}")
        return
    raise GraphError(f"{where}: unsupported parameter value {value!r} (expected bool, int, float, string or a list)")


def parse_graph(data: Any, source: str | os.PathLike = "<graph>", overrides: Mapping[str, Any] | None = None,
                namespace: str | None = None) -> Graph:
    """Validate a loaded graph document; `overrides` replace settings, `namespace` the namespace."""
    src = Path(source)
    if not isinstance(data, dict) or "graph" not in data:
        raise GraphError(f"{src}: expected a mapping with a top-level field 'graph'")
    g = data["graph"]
    if not isinstance(g, dict):
        raise GraphError(f"{src}: field 'graph' must be a mapping")
    unknown = set(g) - GRAPH_FIELDS
    if unknown:
        raise GraphError(f"{src}: unknown field(s) graph.{', graph.'.join(sorted(unknown))} "
                         f"(allowed: {', '.join(sorted(GRAPH_FIELDS))})")
    ns = g.get("namespace", "") if namespace is None else namespace
    ns = "" if ns is None else ns
    if not isinstance(ns, str) or (ns.strip("/") and not _NAMESPACE_RE.match(ns)):
        raise GraphError(f"{src}: field graph.namespace must be a ROS name like 'robot1', got {ns!r}")
    settings = g.get("settings") or {}
    if not isinstance(settings, dict):
        raise GraphError(f"{src}: field graph.settings must be a mapping")
    settings = dict(settings)
    for key, value in (overrides or {}).items():
        if value is not None:
            settings[key] = value
    _derive_settings(settings)
    nodes_doc = g.get("nodes")
    if not isinstance(nodes_doc, dict) or not nodes_doc:
        raise GraphError(f"{src}: field graph.nodes is missing or empty (expected a mapping name -> node)")
    executables = known_executables()
    nodes: dict[str, GraphNode] = {}
    for name, spec in nodes_doc.items():
        where = f"{src}: graph.nodes.{name}"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise GraphError(f"{src}: graph.nodes: node name {name!r} is not a valid ROS node name")
        if not isinstance(spec, dict):
            raise GraphError(f"{where}: expected a mapping with field 'executable'")
        unknown = set(spec) - NODE_FIELDS
        if unknown:
            raise GraphError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} "
                             f"(allowed: {', '.join(sorted(NODE_FIELDS))})")
        exe = spec.get("executable")
        if exe is None:
            raise GraphError(f"{where}.executable: missing (one of: {', '.join(executables)})")
        if exe not in executables:
            raise GraphError(f"{where}.executable: unknown executable {exe!r} (one of: {', '.join(executables)})")
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise GraphError(f"{where}.parameters: expected a mapping name -> value")
        params = _substitute(params, settings, f"{where}.parameters")
        for key, value in params.items():
            _check_parameter(value, f"{where}.parameters.{key}")
        remaps = spec.get("remappings") or {}
        if not isinstance(remaps, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in remaps.items()):
            raise GraphError(f"{where}.remappings: expected a mapping topic -> topic (strings)")
        required = spec.get("required", True)
        if not isinstance(required, bool):
            raise GraphError(f"{where}.required: expected true or false, got {required!r}")
        per_camera = spec.get("for_each_camera", False)
        if not isinstance(per_camera, bool):
            raise GraphError(f"{where}.for_each_camera: expected true or false, got {per_camera!r}")
        if not per_camera:
            nodes[name] = GraphNode(name, exe, params, dict(remaps), required)
            continue
        cameras = settings.get("cameras")
        if not isinstance(cameras, list) or not cameras:
            raise GraphError(f"{where}.for_each_camera: graph.settings.cameras is not a non-empty list")
        for cam in cameras:
            nodes[f"{name}_{cam}"] = GraphNode(f"{name}_{cam}", exe, _per_camera(params, str(cam)),
                                               _per_camera(dict(remaps), str(cam)), required)
    return Graph(source=src, namespace=ns.strip("/"), settings=settings, nodes=nodes)


def load_graph(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None,
               namespace: str | None = None) -> Graph:
    """Read and validate a graph file; errors name the file and the field."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise GraphError(f"{p}: cannot read graph description: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GraphError(f"{p}: not valid YAML: {exc}") from exc
    return parse_graph(data, p, overrides=overrides, namespace=namespace)


def parse_cameras(text: str | None) -> list[str] | None:
    """`"agentview,wrist"` -> ["agentview", "wrist"]; empty or None -> None (keep the file's value)."""
    if not text:
        return None
    cams = [c.strip() for c in text.split(",") if c.strip()]
    for c in cams:
        if not _NAME_RE.match(c):
            raise GraphError(f"cameras: {c!r} is not a valid camera name (letters, digits, underscore)")
    return cams or None


def launch_overrides(policy: str | None = None, cameras: str | None = None, task: str | None = None) -> dict[str, Any]:
    """Settings overrides from launch / command-line arguments (empty values keep the file's value)."""
    out: dict[str, Any] = {}
    if policy:
        out["policy"] = policy
    cams = parse_cameras(cameras)
    if cams:
        out["cameras"] = cams
    if task:
        out["task"] = task
    return out
