"""ROS-free core of the WMPO robot stack: data, policy, world model, reward, RL, registry, sim.

Nothing under this package imports rclpy: the GPU workstation runs it without ROS.
"""

__version__ = "0.1.0"
