"""Build hook shared by pip and colcon.

pip reads the project metadata from pyproject.toml; colcon's ament_python build of the
bringup package `wmpo` (package.xml) runs this file, which additionally installs the
launch files, robot description and node parameters into share/wmpo.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def _share(folder: str) -> tuple[str, list[str]]:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).glob("*") if p.is_file())
    return (f"share/wmpo/{folder}", files)


setup(
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/wmpo"]),
        ("share/wmpo", ["package.xml"]),
        _share("launch"),
        _share("urdf"),
        _share("config"),
    ],
)
