"""ROS 2 nodes of the WMPO stack: thin ROS I/O around wmpo_core."""
