"""Episode recorder: every configured topic, serialized as received, into one MCAP bag per episode.

Subscriptions are raw (CDR bytes, never deserialized on the hot path) and live for the
node's whole life, so the latest latched message (instruction, policy version) is known
before an episode starts and is written at its start. Callbacks only enqueue; one writer
thread owns the open bag, so services and callbacks never race on it.

Services: `~/start` (Trigger: open a new episode in `output_dir`), `~/label`
(SetBool: success label), `~/stop` (Trigger: close the bag), `~/status` (Trigger: JSON of the
episode being recorded and the messages received per topic; every message it counts is in the
bag once `~/stop` returns). At startup, bags left by a
crash in `output_dir` are repaired (marked incomplete). A write error (disk full, ...)
ends that episode with an error on the log and on /diagnostics; the node keeps running.

Drops are counted from gaps in each publisher's sequence numbers (exact, from the DDS
message info), plus messages refused when the writer queue is full.
"""

from __future__ import annotations

import importlib
import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from wmpo_core.data import topics as schema
from wmpo_ros.common import (
    ERROR,
    INSTRUCTION_TOPIC,
    LATCHED_QOS,
    OK,
    POLICY_VERSION_TOPIC,
    WARN,
    Diagnostics,
    declare,
    run_node,
)

# relative names, so that a namespace moves the recorder with the graph
DEFAULT_TOPICS = [topic.lstrip("/") for topic in schema.recorded_by_default()]
# A recorder must not drop what a RELIABLE publisher offers: a deeper reader queue than
# IMAGE_QOS absorbs a late writer-thread wakeup (about 1 s of two 30 Hz cameras).
RECORD_RELIABLE_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                                 history=HistoryPolicy.KEEP_LAST, depth=60)
# Best effort matches both reliable and best-effort publishers (e.g. sensor-data joint_states).
RECORD_BEST_EFFORT_QOS = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE,
                                    history=HistoryPolicy.KEEP_LAST, depth=60)


def _message_class(msgtype: str) -> Any:
    """"pkg/msg/Type" -> the rclpy message class (rosidl_runtime_py is not on PyPI)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


@dataclass
class TopicStats:
    """Counters of one recorded topic (received since start of the node, and per period)."""

    messages: int = 0
    bytes: int = 0
    dropped: int = 0
    period_messages: int = 0
    period_bytes: int = 0
    last_seq: dict[bytes, int] = field(default_factory=dict)  # publisher gid -> last sequence number


@dataclass
class RecordedTopic:
    """One subscription: the name it is resolved with, the name it has in the bag, its type."""

    name: str
    bag_topic: str
    msgtype: str
    latched: bool


class EpisodeRecorderNode(Node):
    """Records episodes to MCAP bags (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("episode_recorder", **kwargs)
        self.output_dir = Path(declare(self, "output_dir", "episodes", "folder receiving one bag directory per episode"))
        topic_specs = declare(self, "topics", DEFAULT_TOPICS,
                              "topics to record, relative to the namespace; 'name' or 'name:pkg/msg/Type'",
                              read_only=True)
        best_effort = declare(self, "best_effort_topics", ["joint_states"],
                              "topics subscribed best effort (their publishers use sensor-data QoS)", read_only=True)
        declare(self, "task", "", "task name written into the episode metadata")
        declare(self, "robot_id", "robot", "robot id written into the episode metadata")
        declare(self, "seed", -1, "seed of the next episode (metadata; -1 = unknown)")
        declare(self, "control_hz", 20.0, "control rate written into the episode metadata")
        self.queue_size = declare(self, "queue_size", 600, "messages buffered between callbacks and the writer",
                                  read_only=True)
        self.instruction_topic = declare(self, "instruction_topic", INSTRUCTION_TOPIC, "latched instruction topic",
                                         read_only=True)
        self.policy_version_topic = declare(self, "policy_version_topic", POLICY_VERSION_TOPIC,
                                            "latched policy version topic", read_only=True)

        self._queue: queue.Queue[tuple] = queue.Queue(maxsize=self.queue_size)
        self._lock = threading.Lock()
        self._recording = False
        self._writer: Any = None
        self._episode_id: str | None = None
        self._episode_error: str | None = None
        self._latched: dict[str, tuple[RecordedTopic, bytes]] = {}
        self._stats: dict[str, TopicStats] = {}
        self._queue_dropped = 0
        self._episodes_done = 0
        self._last_period = time.monotonic()

        self.diag = Diagnostics(self, "recorder", period_s=1.0)
        self._subs = []
        self.topics: list[RecordedTopic] = []
        cb_group = ReentrantCallbackGroup()
        specs = list(topic_specs)
        for extra in (self.instruction_topic, self.policy_version_topic):
            if not any(s.split(":", 1)[0] == extra for s in specs):
                specs.append(extra)  # always known for the metadata, recorded only if listed
        for spec in specs:
            topic = self._make_topic(spec)
            record = spec in topic_specs
            qos = LATCHED_QOS if topic.latched else (
                RECORD_BEST_EFFORT_QOS if spec.split(":", 1)[0] in best_effort else RECORD_RELIABLE_QOS)
            self._stats[topic.bag_topic] = TopicStats()
            sub = self.create_subscription(_message_class(topic.msgtype), topic.name,
                                           self._make_callback(topic, record), qos, raw=True,
                                           callback_group=cb_group)
            self._subs.append((topic.bag_topic, sub))
            if record:
                self.topics.append(topic)

        services = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/start", self._on_start, callback_group=services)
        self.create_service(Trigger, "~/stop", self._on_stop, callback_group=services)
        self.create_service(SetBool, "~/label", self._on_label, callback_group=services)
        self.create_service(Trigger, "~/status", self._on_status, callback_group=ReentrantCallbackGroup())
        self.create_timer(1.0, self._update_diagnostics)

        self._writer_thread = threading.Thread(target=self._writer_loop, name="bag_writer", daemon=True)
        self._writer_thread.start()
        self._repair_on_startup()
        self.diag.set_status(OK, "idle")
        self.get_logger().info(f"recording {len(self.topics)} topics into {self.output_dir}")

    # -- setup ---------------------------------------------------------------------------

    def _make_topic(self, spec: str) -> RecordedTopic:
        name, _, msgtype = spec.partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"parameter 'topics': empty topic name in {spec!r}")
        # Bags use namespace-free absolute names (docs/interfaces.md), whatever the namespace.
        bag_topic = name if name.startswith("/") else f"/{name}"
        if not msgtype:
            try:
                msgtype = schema.msgtype_for_topic(bag_topic)
            except KeyError:
                raise ValueError(f"parameter 'topics': {name!r} is not in the episode bag schema; "
                                 f"write it as '{name}:pkg/msg/Type'") from None
        try:
            _message_class(msgtype)
        except (ValueError, ImportError, AttributeError):
            raise ValueError(f"parameter 'topics': unknown message type {msgtype!r} for {name!r}") from None
        return RecordedTopic(name=name, bag_topic=bag_topic, msgtype=msgtype,
                             latched=bag_topic in schema.TRANSIENT_LOCAL_TOPICS)

    def _repair_on_startup(self) -> None:
        from wmpo_core.data import bag

        if not self.output_dir.is_dir():
            return
        try:
            recovered = bag.repair_folder(self.output_dir)
        except Exception as exc:  # noqa: BLE001 - a broken folder must not stop recording new episodes
            self.get_logger().error(f"repairing bags in {self.output_dir} failed: {exc}")
            self.diag.set_status(WARN, f"repair failed: {exc}")
            return
        recovered = list(recovered or [])
        for item in recovered:
            self.get_logger().warning(f"recovered crashed episode: {item}")
        self.diag.set("recovered_episodes", len(recovered))

    # -- hot path --------------------------------------------------------------------------

    def _make_callback(self, topic: RecordedTopic, record: bool):
        stats = self._stats[topic.bag_topic]

        def callback(data: bytes, info: dict) -> None:
            t_ns = self.get_clock().now().nanoseconds
            seq, gid = info.get("publication_sequence_number"), info.get("publisher_gid")
            with self._lock:
                if seq is not None and gid is not None:
                    key = bytes(gid.get("data", b""))
                    last = stats.last_seq.get(key)
                    if last is not None and seq > last + 1:
                        stats.dropped += seq - last - 1
                    elif last is not None and seq < last and stats.dropped > 0:
                        stats.dropped -= 1  # a late arrival fills a gap counted earlier
                    stats.last_seq[key] = max(seq, last or 0)
                stats.messages += 1
                stats.bytes += len(data)
                stats.period_messages += 1
                stats.period_bytes += len(data)
                if topic.latched:
                    self._latched[topic.name] = (topic, data)
                # Enqueued under the lock that counts it: a message ~/status counts is written before a
                # later ~/stop closes the bag (the close is queued behind it).
                if self._recording and record:
                    try:
                        self._queue.put_nowait(("msg", topic, t_ns, data))
                    except queue.Full:
                        self._queue_dropped += 1
                        stats.dropped += 1

        return callback

    # -- writer thread -------------------------------------------------------------------

    def _writer_loop(self) -> None:
        while True:
            item = self._queue.get()
            kind = item[0]
            if kind == "msg":
                _, topic, t_ns, data = item
                if self._writer is not None:
                    try:
                        self._writer.write_raw(topic.bag_topic, t_ns, data)
                    except Exception as exc:  # noqa: BLE001 - disk full etc.: end this episode, keep the node
                        self._fail_episode(f"write to {topic.bag_topic} failed: {exc}")
            elif kind == "call":
                _, fn, reply = item
                try:
                    reply.put((True, fn()))
                except Exception as exc:  # noqa: BLE001 - reported to the service caller
                    reply.put((False, exc))
            elif kind == "quit":
                return

    def _in_writer(self, fn, timeout: float = 30.0) -> Any:
        """Run `fn` on the writer thread after every message queued before it; re-raise its error."""
        reply: queue.Queue = queue.Queue()
        self._queue.put(("call", fn, reply), timeout=timeout)
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def _fail_episode(self, why: str) -> None:
        with self._lock:
            self._recording = False
            self._last_episode_counts = self._episode_counts_locked()  # ~/status: this episode's, not the last one's
        self._episode_error = why
        self.get_logger().error(f"episode {self._episode_id}: {why}; episode stopped, the recorder keeps running")
        self.diag.set_status(ERROR, f"episode {self._episode_id} stopped: {why}")
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort()  # keeps every flushed chunk; the next start (or `wmpo episodes --repair`) repairs it

    # -- services ------------------------------------------------------------------------

    def _await_latched(self, timeout_s: float = 2.0) -> None:
        """Give transient-local history of already-matched publishers a moment to arrive."""
        names = [self.instruction_topic, self.policy_version_topic] + [t.name for t in self.topics if t.latched]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                missing = [n for n in names if n not in self._latched]
            if not any(self.count_publishers(n) for n in missing):
                return
            time.sleep(0.02)

    def _metadata(self) -> dict[str, Any]:
        def latest(name: str) -> str:
            item = self._latched.get(name)
            return deserialize_message(item[1], String).data if item else ""

        seed = int(self.get_parameter("seed").value)
        with self._lock:
            instruction, version = latest(self.instruction_topic), latest(self.policy_version_topic)
        return {
            "task": str(self.get_parameter("task").value),
            "instruction": instruction,
            "robot_id": str(self.get_parameter("robot_id").value),
            "policy_version": version,
            "seed": seed if seed >= 0 else None,
            "control_hz": float(self.get_parameter("control_hz").value),
        }

    def _open(self, meta: dict[str, Any]) -> str:
        from wmpo_core.data import bag

        t_ns = self.get_clock().now().nanoseconds
        metadata = bag.EpisodeMetadata.new(**meta)
        writer = bag.EpisodeWriter(self.output_dir, metadata, start_ns=t_ns)
        try:
            for topic in self.topics:  # every configured topic is in the bag, even if nothing arrives
                writer.add_topic(topic.bag_topic, topic.msgtype)
            with self._lock:
                latched = [v for v in self._latched.values() if v[0] in self.topics]
            for topic, data in latched:  # latched state published before the start belongs to the episode
                writer.write_raw(topic.bag_topic, t_ns, data)
        except Exception:
            writer.abort()
            raise
        self._writer = writer
        self._episode_error = None
        with self._lock:
            self._recording = True
            self._episode_start_counts = {t: (s.messages, s.dropped) for t, s in self._stats.items()}
            self._episode_queue_dropped = self._queue_dropped
        return metadata.episode_id

    def episode_counts(self) -> dict[str, Any]:
        """Messages received and dropped per topic since the current episode started (until it stopped)."""
        with self._lock:
            return self._episode_counts_locked()

    def _episode_counts_locked(self) -> dict[str, Any]:
        start = getattr(self, "_episode_start_counts", {})
        return {
            "received": {t: s.messages - start.get(t, (0, 0))[0] for t, s in self._stats.items()},
            "dropped": {t: s.dropped - start.get(t, (0, 0))[1] for t, s in self._stats.items()},
            "queue_overflow": self._queue_dropped - getattr(self, "_episode_queue_dropped", 0),
        }

    def _on_start(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._writer is not None:
            response.success, response.message = False, f"already recording episode {self._episode_id}; call ~/stop first"
            return response
        try:
            self._await_latched()
            meta = self._metadata()
            self._episode_id = self._in_writer(lambda: self._open(meta))
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the node stays up
            self.get_logger().error(f"cannot start an episode in {self.output_dir}: {exc}")
            self.diag.set_status(ERROR, f"cannot start an episode: {exc}")
            response.success, response.message = False, f"cannot start an episode in {self.output_dir}: {exc}"
            return response
        self.diag.set_status(OK, f"recording {self._episode_id}")
        self.get_logger().info(f"episode {self._episode_id} started (seed {meta['seed']}, "
                               f"instruction {meta['instruction']!r}, policy {meta['policy_version']!r})")
        response.success, response.message = True, json.dumps({"episode_id": self._episode_id, **meta})
        return response

    def _on_label(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if self._writer is None:
            response.success = False
            response.message = self._episode_error or "no episode is being recorded; call ~/start first"
            return response
        try:
            self._in_writer(lambda: self._writer.set_label(bool(request.data)))
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            response.success, response.message = False, f"label failed: {exc}"
            return response
        response.success, response.message = True, f"episode {self._episode_id} labelled success={bool(request.data)}"
        return response

    def _close(self) -> None:
        with self._lock:
            self._recording = False
            self._last_episode_counts = self._episode_counts_locked()  # what this bag holds, not later arrivals
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _on_status(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """JSON: whether an episode is open, its id, and messages received / dropped per topic in it."""
        with self._lock:
            counts = self._episode_counts_locked() if self._recording else getattr(self, "_last_episode_counts", None)
            recording = self._recording
        response.success = True
        response.message = json.dumps({"recording": recording, "episode_id": self._episode_id,
                                       "error": self._episode_error, **(counts or {"received": {}, "dropped": {}})})
        return response

    def _on_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._writer is None:
            response.success = False
            response.message = (f"episode {self._episode_id} had already stopped: {self._episode_error}"
                                if self._episode_error else "no episode is being recorded")
            return response
        try:
            self._in_writer(self._close)
        except Exception as exc:  # noqa: BLE001 - reported to the caller; the bag is repaired at next start
            self.get_logger().error(f"closing episode {self._episode_id} failed: {exc}")
            self.diag.set_status(ERROR, f"closing episode failed: {exc}")
            response.success, response.message = False, f"closing episode {self._episode_id} failed: {exc}"
            return response
        self._episodes_done += 1
        counts = self._last_episode_counts
        self.get_logger().info(f"episode {self._episode_id} finalized: dropped {sum(counts['dropped'].values())} "
                               f"({json.dumps(counts)})")
        self.diag.set_status(OK, "idle")
        response.success, response.message = True, json.dumps({"episode_id": self._episode_id})
        return response

    # -- diagnostics ---------------------------------------------------------------------

    def _update_diagnostics(self) -> None:
        now = time.monotonic()
        dt = max(now - self._last_period, 1e-6)
        self._last_period = now
        values: dict[str, Any] = {}
        with self._lock:
            for topic, s in self._stats.items():
                values[f"{topic} msgs/s"] = s.period_messages / dt
                values[f"{topic} bytes/s"] = s.period_bytes / dt
                values[f"{topic} messages"] = s.messages
                values[f"{topic} dropped"] = s.dropped
                s.period_messages = s.period_bytes = 0
            values["dropped_total"] = sum(s.dropped for s in self._stats.values())
            values["queue_dropped"] = self._queue_dropped
            values["recording"] = self._recording
        for bag_topic, sub in self._subs:  # matched publishers: a topic nobody publishes shows 0
            values[f"{bag_topic} publishers"] = sub.get_publisher_count()
        values["queue_depth"] = self._queue.qsize()
        values["episode"] = self._episode_id or ""
        values["episodes_finalized"] = self._episodes_done
        self.diag.update(values)

    def dropped(self) -> dict[str, int]:
        """Dropped messages per bag topic so far (sequence gaps and queue overflows)."""
        with self._lock:
            return {t: s.dropped for t, s in self._stats.items()}

    def close(self) -> None:
        """Finalize an open episode (SIGINT / SIGTERM) so a clean shutdown leaves a complete bag."""
        if self._writer is not None:
            try:
                self._in_writer(self._close, timeout=60.0)
                self.get_logger().info(f"episode {self._episode_id} finalized at shutdown")
            except Exception as exc:  # noqa: BLE001 - the bag is repaired at the next start
                self.get_logger().error(f"finalizing episode {self._episode_id} at shutdown failed: {exc}")
        self._queue.put(("quit",))
        self._writer_thread.join(timeout=10.0)


def main(args: list[str] | None = None) -> int:
    """Console script `episode_recorder_node`."""
    return run_node(EpisodeRecorderNode, args)


if __name__ == "__main__":
    sys.exit(main())
