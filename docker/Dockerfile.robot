# Robot image: ROS 2 Kilted, MoveIt (moveit_py), ros2_control, robot_state_publisher, xacro,
# RealSense (pyrealsense2), the wmpo training/inference core and the wmpo ROS 2 nodes.
#
# Build from the repository root (the build context):
#   docker build -f docker/Dockerfile.robot -t wmpo-robot:0.1.0 .
# Run on the robot computer (host network for DDS, USB for the cameras):
#   docker run --rm -it --network host --ipc host --privileged -v /dev:/dev \
#     -v /srv/wmpo/episodes:/opt/wmpo/episodes -v /srv/wmpo/policies:/opt/wmpo/policies wmpo-robot:0.1.0
#
# GPU variant: the policy node runs on the robot's NVIDIA GPU. TORCH_INDEX picks the PyTorch wheel index of
# the same pinned torch: cpu (default, the CPU build) or a CUDA tag that index publishes for TORCH_VERSION
# (cu126, cu128, ...; the wheels bring their CUDA libraries, the host brings only the driver):
#   docker build -f docker/Dockerfile.robot --build-arg TORCH_INDEX=cu128 -t wmpo-robot:0.1.0-cu128 .
# Run it as above plus `--gpus all` (the host needs the NVIDIA driver and the NVIDIA Container Toolkit):
#   docker run --rm -it --gpus all --network host --ipc host --privileged -v /dev:/dev \
#     -v /srv/wmpo/episodes:/opt/wmpo/episodes -v /srv/wmpo/policies:/opt/wmpo/policies wmpo-robot:0.1.0-cu128
# The policy node's `vla.device` (default auto: the first CUDA GPU when there is one) then finds cuda:0; to pin
# it, set `vla: {device: "cuda:0"}` under nodes.policy.parameters in a copy of config/robot.yaml, mount it and
# add `ros2 launch wmpo robot.launch.py config:=/etc/wmpo/robot.yaml` to the run command. The workstation
# image (docker/Dockerfile.workstation) installs the same torch, from the cu128 index by default.
FROM ros:kilted-ros-base-noble

ARG TORCH_VERSION=2.13.0
# cpu or cuXYZ: the index https://download.pytorch.org/whl/${TORCH_INDEX} the torch wheel comes from
ARG TORCH_INDEX=cpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    WMPO_HOME=/opt/wmpo \
    ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET \
    RMW_IMPLEMENTATION=rmw_fastrtps_cpp

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Checked first: a mistyped TORCH_INDEX would otherwise fail only at the pip step, after the long apt install.
RUN if [[ ! "${TORCH_INDEX}" =~ ^(cpu|cu[0-9]{3})$ ]]; then \
        echo "build-arg TORCH_INDEX='${TORCH_INDEX}': expected cpu or a CUDA wheel index tag such as cu128" >&2; \
        exit 1; \
    fi

# ROS packages the bringup needs (package.xml exec_depends) plus MoveIt and ros2_control;
# libusb for pyrealsense2; EGL/OSMesa so the simulator backend also runs in this image.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-venv python3-pip \
        ros-kilted-robot-state-publisher ros-kilted-xacro \
        ros-kilted-rosbag2-storage-mcap ros-kilted-diagnostic-aggregator \
        ros-kilted-ros2-control ros-kilted-ros2-controllers \
        ros-kilted-moveit ros-kilted-moveit-py \
        libusb-1.0-0 libegl1 libgl1 libosmesa6 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/wmpo/src
# The venv sees the ROS Python packages (rclpy, moveit_py) through --system-site-packages;
# colcon runs from it so the node entry points use the venv's interpreter.
RUN python3 -m venv --system-site-packages /opt/wmpo/venv \
    && /opt/wmpo/venv/bin/pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" \
    && /opt/wmpo/venv/bin/pip install "colcon-common-extensions>=0.3"

COPY pyproject.toml setup.py package.xml README.md ./
COPY resource ./resource
COPY wmpo_core ./wmpo_core
COPY launch ./launch
COPY urdf ./urdf
COPY config ./config
COPY ros2_ws ./ros2_ws
# pip keeps the torch above (it satisfies the floor); the check fails the build if anything replaced it.
RUN /opt/wmpo/venv/bin/pip install -e ".[sim,realsense,kinematics]" \
    && /opt/wmpo/venv/bin/python -c 'import sys, torch; index, version = sys.argv[1:]; \
got = "cpu" if torch.version.cuda is None else "cu" + torch.version.cuda.replace(".", ""); \
ok = got == index and torch.__version__.split("+")[0] == version; \
print(f"torch {torch.__version__} ({got})"); \
sys.exit(0 if ok else f"torch {torch.__version__} ({got}) is not torch {version} from the {index} index")' \
        "${TORCH_INDEX}" "${TORCH_VERSION}"

# colcon: the wmpo_ros nodes and the bringup package `wmpo` (launch/, urdf/, config/).
RUN source /opt/ros/kilted/setup.bash \
    && source /opt/wmpo/venv/bin/activate \
    && colcon build --base-paths /opt/wmpo/src /opt/wmpo/src/ros2_ws/src \
        --build-base /opt/wmpo/build --install-base /opt/wmpo/install \
    && rm -rf /opt/wmpo/build /opt/wmpo/src/log

COPY docker/robot_entrypoint.sh /usr/local/bin/wmpo-robot-entrypoint
RUN chmod 0755 /usr/local/bin/wmpo-robot-entrypoint && mkdir -p /opt/wmpo/episodes /opt/wmpo/policies

WORKDIR /opt/wmpo
ENTRYPOINT ["/usr/local/bin/wmpo-robot-entrypoint"]
CMD ["ros2", "launch", "wmpo", "robot.launch.py"]
