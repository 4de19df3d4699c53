"""Episode bags: write / read round trip through rosbags and the mcap reader, alignment, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.highlevel import AnyReader

from wmpo_core.control import ACTION_NAMES
from wmpo_core.data import topics as T
from wmpo_core.data.bag import (
    EpisodeError,
    EpisodeMetadata,
    EpisodeWriter,
    bag_status,
    iter_messages,
    load_episode,
    read_metadata,
)
from wmpo_core.data.episodes import write_synthetic_episode

STEPS = 20
PERIOD = 50_000_000  # 20 Hz
START = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    return write_synthetic_episode(tmp_path_factory.mktemp("eps"), STEPS, episode_id="ep-roundtrip")


def test_load_episode_aligns_frames_proprio_actions_and_chunks(episode):
    ep = load_episode(episode)
    assert ep.num_steps == STEPS and ep.dropped_actions == 0
    assert set(ep.frames) == {"agentview", "wrist"}
    for c, cam in enumerate(("agentview", "wrist")):
        frames = ep.frames[cam]
        assert frames.shape == (STEPS, 64, 64, 3) and frames.dtype == np.uint8
        # Step t must see image t (red = t) of this camera (green = camera index).
        np.testing.assert_array_equal(frames[:, 10, 20, 0], np.arange(STEPS))
        assert (frames[..., 1] == c).all()
        np.testing.assert_array_equal(ep.frame_stamps_ns[cam], START + np.arange(STEPS) * PERIOD)
    np.testing.assert_array_equal(ep.actions, np.repeat(np.arange(STEPS, dtype=np.float32)[:, None], 7, axis=1))
    np.testing.assert_array_equal(ep.action_stamps_ns, START + np.arange(STEPS) * PERIOD + 5_000_000)
    assert ep.actions.shape == (STEPS, 7) and ep.action_names == ACTION_NAMES
    assert ep.joint_names == ("j1", "j2", "j3")
    t = np.arange(STEPS, dtype=np.float32)
    np.testing.assert_array_equal(ep.proprio, np.stack([t, -t, 0.5 * t], axis=1))
    assert ep.chunks.shape == (3, 8, 7)  # chunks at steps 0, 8, 16
    np.testing.assert_array_equal(ep.chunks[1, :, 0], 8 + np.arange(8))
    np.testing.assert_array_equal(ep.chunk_stamps_ns, START + np.array([0, 8, 16]) * PERIOD)
    md = ep.metadata
    assert md.episode_id == "ep-roundtrip" and md.success is True and md.complete is True
    assert md.task == "lift" and md.instruction == "lift the red cube" and md.control_hz == 20.0


def test_bag_reads_with_rosbags_and_mcap_ros2_decoder(episode):
    assert bag_status(episode) == "ok"
    with AnyReader([episode]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts[T.camera_image_topic("agentview")] == STEPS
    assert counts[T.APPLIED_ACTION] == STEPS and counts[T.JOINT_STATES] == STEPS
    assert counts[T.ACTION_CHUNK] == 3 and counts[T.EPISODE] == 2

    mcap_file = episode / f"{episode.name}.mcap"
    decoded: dict[str, list] = {}
    with mcap_file.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        assert summary is not None and summary.statistics.message_count == sum(counts.values())
        for _, channel, _, msg in reader.iter_decoded_messages(log_time_order=True):
            decoded.setdefault(channel.topic, []).append(msg)
    img = decoded[T.camera_image_topic("wrist")][3]
    assert (img.height, img.width, img.encoding, img.step) == (64, 64, "rgb8", 192)
    pixels = np.frombuffer(bytes(img.data), dtype=np.uint8).reshape(64, 64, 3)
    assert pixels[0, 0].tolist() == [3, 1, 0]
    chunk = decoded[T.ACTION_CHUNK][2]
    assert list(chunk.joint_names) == list(ACTION_NAMES) and len(chunk.points) == 8
    assert chunk.points[1].time_from_start.nanosec == 2 * PERIOD  # k-th point at (k+1) periods
    assert chunk.header.stamp.sec * 10**9 + chunk.header.stamp.nanosec == START + 16 * PERIOD
    metas = [json.loads(m.data) for m in decoded[T.EPISODE]]
    assert [m["complete"] for m in metas] == [False, True]
    assert metas[-1]["success"] is True and metas[0]["success"] is None

    meta_yaml = yaml.safe_load((episode / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta_yaml["version"] == 9 and meta_yaml["storage_identifier"] == "mcap"
    assert json.loads(meta_yaml["custom_data"]["wmpo.episode"])["episode_id"] == "ep-roundtrip"
    latched = [t for t in meta_yaml["topics_with_message_count"] if t["topic_metadata"]["name"] == T.INSTRUCTION]
    assert latched[0]["topic_metadata"]["offered_qos_profiles"][0]["durability"] == "transient_local"


def test_iter_messages_filters_topics_in_time_order(episode):
    got = list(iter_messages(episode, [T.APPLIED_ACTION, T.SUCCESS]))
    assert [t for t, _, _ in got].count(T.APPLIED_ACTION) == STEPS
    assert got[-1][0] == T.SUCCESS and got[-1][2].data is True
    stamps = [ts for _, ts, _ in got]
    assert stamps == sorted(stamps)


def test_write_raw_passes_cdr_bytes_through_unchanged(tmp_path):
    md = EpisodeMetadata.new("lift", "lift", episode_id="raw")
    msg = T.joint_state_msg(5, ["a"], [1.5])
    cdr = T.serialize(msg)
    with EpisodeWriter(tmp_path, md, start_ns=1) as w:
        w.write_raw(T.JOINT_STATES, 10, cdr)
    [(topic, ts, back)] = list(iter_messages(tmp_path / "raw", [T.JOINT_STATES]))
    assert (topic, ts, list(back.position), list(back.name)) == (T.JOINT_STATES, 10, [1.5], ["a"])
    with (tmp_path / "raw" / "raw.mcap").open("rb") as f:
        raw = [m.data for _, c, m in make_reader(f).iter_messages() if c.topic == T.JOINT_STATES]
    assert raw == [cdr]


def test_alignment_uses_latest_observation_at_or_before_each_action(tmp_path):
    md = EpisodeMetadata.new("lift", "lift", episode_id="align")
    img = np.zeros((4, 4, 3), np.uint8)
    reordered = list(reversed(ACTION_NAMES))
    with EpisodeWriter(tmp_path, md, start_ns=0) as w:
        w.write(T.APPLIED_ACTION, 50, T.applied_action_msg(50, np.zeros(7)))  # before any image: dropped
        for stamp, value in ((100, 1), (200, 2), (300, 3)):
            img[...] = value
            w.write(T.camera_image_topic("front"), stamp + 7, T.image_msg(stamp, img))
        w.write(T.JOINT_STATES, 90, T.joint_state_msg(90, ["b", "a"], [2.0, 1.0]))
        w.write(T.JOINT_STATES, 250, T.joint_state_msg(250, ["a", "b"], [10.0, 20.0]))
        # Exactly at an image stamp counts as "at or before"; names in another order are reordered.
        w.write(T.APPLIED_ACTION, 200, T.applied_action_msg(200, np.arange(7.0)[::-1], names=reordered))
        w.write(T.APPLIED_ACTION, 299, T.applied_action_msg(299, np.ones(7)))
    ep = load_episode(tmp_path / "align")
    assert ep.dropped_actions == 1 and ep.num_steps == 2
    assert ep.frames["front"][:, 0, 0, 0].tolist() == [2, 2]
    np.testing.assert_array_equal(ep.actions[0], np.arange(7.0))
    assert ep.joint_names == ("b", "a")
    np.testing.assert_array_equal(ep.proprio, [[2.0, 1.0], [20.0, 10.0]])
    assert ep.chunks.shape == (0, 0, 7)


def test_load_episode_rejects_unknown_camera_and_bad_encoding(tmp_path, episode):
    with pytest.raises(EpisodeError, match=r"ep-roundtrip\.mcap.*no image topic for camera\(s\) \['top'\]"):
        load_episode(episode, cameras=["top"])
    md = EpisodeMetadata.new("lift", "lift", episode_id="mono")
    msg = T.image_msg(5, np.zeros((2, 2, 3), np.uint8))
    msg.encoding = "mono16"
    with EpisodeWriter(tmp_path, md, start_ns=0) as w:
        w.write(T.camera_image_topic("front"), 5, msg)
        w.write(T.APPLIED_ACTION, 6, T.applied_action_msg(6, np.zeros(7)))
    with pytest.raises(EpisodeError, match=r"mono\.mcap: /camera/front/image_raw image 0: encoding 'mono16'"):
        load_episode(tmp_path / "mono")


def test_metadata_validation_names_the_field():
    good = EpisodeMetadata.new("lift", "lift it", episode_id="e1", seed=4).to_dict()
    assert EpisodeMetadata.from_dict({**good, "future_key": 1}).extra == {"future_key": 1}
    with pytest.raises(ValueError, match=r"field 'success' must be bool or null, got 'yes'"):
        EpisodeMetadata.from_dict({**good, "success": "yes"})
    with pytest.raises(ValueError, match=r"field 'seed' must be int or null, got True"):
        EpisodeMetadata.from_dict({**good, "seed": True})
    with pytest.raises(ValueError, match=r"missing field 'task'"):
        EpisodeMetadata.from_dict({k: v for k, v in good.items() if k != "task"})
    with pytest.raises(ValueError, match=r"episode_id '../x'"):
        EpisodeMetadata(episode_id="../x", task="t", instruction="i")


def test_writer_never_overwrites_and_metadata_falls_back_to_topic(tmp_path, episode):
    with pytest.raises(EpisodeError, match="exists already"):
        EpisodeWriter(episode.parent, EpisodeMetadata.new("lift", "x", episode_id=episode.name))
    path = write_synthetic_episode(tmp_path, 3, episode_id="no-custom", success=False)
    meta_file = path / "metadata.yaml"
    data = yaml.safe_load(meta_file.read_text())
    data["rosbag2_bagfile_information"]["custom_data"] = None
    meta_file.write_text(yaml.safe_dump(data))
    md = read_metadata(path)
    assert (md.episode_id, md.success, md.complete) == ("no-custom", False, True)


@settings(max_examples=50, deadline=None)
@given(
    task=st.text(min_size=1, max_size=20),
    instruction=st.text(max_size=80),
    success=st.one_of(st.none(), st.booleans()),
    seed=st.one_of(st.none(), st.integers(-(2**62), 2**62)),
    control_hz=st.floats(0.1, 1000, allow_nan=False),
)
def test_metadata_json_round_trip(task, instruction, success, seed, control_hz):
    md = EpisodeMetadata.new(task, instruction, success=success, seed=seed, control_hz=control_hz,
                             extra={"operator": "x"})
    assert EpisodeMetadata.from_json(md.to_json()) == md
