"""Episode bags: one rosbag2 directory (MCAP storage) per episode.

Writing uses the ``rosbags`` writer (rosbag2 version 9, MCAP storage, ROS 2 Kilted
typestore) with bounded crash loss. Reading uses ``mcap``'s indexed reader and
deserializes with ``rosbags`` (types built from the bag's own definitions); bags whose
writer was killed are recovered with ``mcap``'s non-seeking reader. The bag schema
(topics, types) lives in :mod:`wmpo_core.data.topics`; the contract is
docs/interfaces.md "Episode bags". ROS-free: never imports rclpy.

One module per concern, all names importable from here:

* :mod:`~wmpo_core.data.bag.metadata`: layout constants, errors, :class:`EpisodeMetadata`;
* :mod:`~wmpo_core.data.bag.writer`: :class:`EpisodeWriter` (bounded crash loss);
* :mod:`~wmpo_core.data.bag.inspection`: status, summary and metadata of a bag, crash scans (read only);
* :mod:`~wmpo_core.data.bag.repair`: a crashed bag rewritten from its complete chunks;
* :mod:`~wmpo_core.data.bag.reader`: messages, and an episode as aligned arrays.
"""

from __future__ import annotations

from wmpo_core.data.bag.inspection import (
    BagSummary,
    CrashScan,
    bag_dir,
    bag_status,
    bag_summary,
    episode_dirs,
    inspect_episode,
    is_recording,
    read_metadata,
    scan_crashed,
)
from wmpo_core.data.bag.inspection import (
    _iter_recoverable as _iter_recoverable,  # imported by wmpo_core.data.import_bag
)
from wmpo_core.data.bag.metadata import (
    CUSTOM_DATA_KEY,
    MCAP_MAGIC,
    METADATA_FILE,
    REPAIR_SUFFIX,
    EpisodeError,
    EpisodeMetadata,
    EpisodeWriteError,
    new_episode_id,
    utc_now_iso,
)
from wmpo_core.data.bag.reader import EpisodeArrays, iter_messages, load_episode
from wmpo_core.data.bag.reader import (
    _typestore_for as _typestore_for,  # imported by wmpo_core.data.import_bag
)
from wmpo_core.data.bag.repair import (
    CRASHED_SUFFIX,
    REPAIR_DATA_KEY,
    REPAIR_WORKDIR,
    RepairReport,
    repair_episode,
    repair_folder,
)
from wmpo_core.data.bag.writer import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_FLUSH_INTERVAL_S,
    ROSBAGS_MAX_CHUNK,
    EpisodeWriter,
)

__all__ = [
    "BagSummary",
    "CRASHED_SUFFIX",
    "CUSTOM_DATA_KEY",
    "CrashScan",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_FLUSH_INTERVAL_S",
    "EpisodeArrays",
    "EpisodeError",
    "EpisodeMetadata",
    "EpisodeWriteError",
    "EpisodeWriter",
    "MCAP_MAGIC",
    "METADATA_FILE",
    "REPAIR_DATA_KEY",
    "REPAIR_SUFFIX",
    "REPAIR_WORKDIR",
    "ROSBAGS_MAX_CHUNK",
    "RepairReport",
    "bag_dir",
    "bag_status",
    "bag_summary",
    "episode_dirs",
    "inspect_episode",
    "is_recording",
    "iter_messages",
    "load_episode",
    "new_episode_id",
    "read_metadata",
    "repair_episode",
    "repair_folder",
    "scan_crashed",
    "utc_now_iso",
]
