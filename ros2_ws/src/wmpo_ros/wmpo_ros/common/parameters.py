"""Declaring a node parameter with its description and default (read-only when asked)."""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

_LIST_TYPES = {
    str: Parameter.Type.STRING_ARRAY,
    float: Parameter.Type.DOUBLE_ARRAY,
    int: Parameter.Type.INTEGER_ARRAY,
    bool: Parameter.Type.BOOL_ARRAY,
}


def declare(node: Node, name: str, default: Any, description: str, read_only: bool = False, item_type: type | None = None) -> Any:
    """Declare parameter `name` with a description and a default; return its value.

    The value is coerced to the default's type (so `20` in a YAML file is accepted for a
    float parameter); `item_type` gives the element type of a list whose default is empty.
    Raises ValueError naming the parameter when an override has the wrong type.
    """
    descriptor = ParameterDescriptor(description=description, read_only=read_only, dynamic_typing=True)
    if isinstance(default, (list, tuple)) and len(default) == 0:
        # rclpy cannot infer the type of an empty list; declare it typed and unset.
        ptype = _LIST_TYPES[item_type or str]
        param = node.declare_parameter(name, ptype, ParameterDescriptor(description=description, read_only=read_only))
        value = param.value
        return list(value) if value is not None else []
    value = node.declare_parameter(name, default, descriptor).value
    return _coerce(name, value, default)


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise TypeError
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, (bool, str)):
                raise TypeError
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise TypeError
            return value
        if isinstance(default, (list, tuple)):
            item = type(default[0])
            return [_coerce(f"{name}[{i}]", v, default[0]) for i, v in enumerate(list(value))] if item is not str else [str(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name!r}: expected {type(default).__name__} like {default!r}, got {value!r}") from None
    return value
