"""Crashed, truncated, corrupt and disk-full bags: listing, repair, clear errors, nothing lost."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mcap.exceptions import McapError
from mcap.records import Chunk, Message
from mcap.stream_reader import StreamReader, breakup_chunk
from rosbags.highlevel import AnyReader

from wmpo_core.data import topics as T
from wmpo_core.data.bag import (
    DEFAULT_CHUNK_SIZE,
    EpisodeError,
    EpisodeMetadata,
    EpisodeWriteError,
    EpisodeWriter,
    bag_status,
    iter_messages,
    load_episode,
    read_metadata,
    repair_episode,
    repair_folder,
)
from wmpo_core.data.episodes import EpisodeInfo, list_episodes, write_synthetic_episode

FLUSH_INTERVAL_S = 0.2
SIZE_CHUNK = 64 * 1024

# Writes one image and one applied action per step, printing "<step> <ns before> <ns after>"
# (CLOCK_MONOTONIC, shared by every process) around each step; the parent SIGKILLs it mid-episode.
# "timer": 8x8 images, so the whole episode stays far below the 1 MiB chunk size and only the
# age of the pending chunk can flush it; "size": 64x64 images in 64 KiB chunks, no age flush.
CHILD = r"""
import sys, time
import numpy as np
from wmpo_core.data import topics as T
from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter
out, mode = sys.argv[1], sys.argv[2]
kwargs = {"flush_interval_s": 0.2} if mode == "timer" else {"flush_interval_s": None, "chunk_size": 64 * 1024}
w = EpisodeWriter(out, EpisodeMetadata.new("lift", "lift it", episode_id="killed"), start_ns=0, **kwargs)
img = np.zeros((8, 8, 3) if mode == "timer" else (64, 64, 3), np.uint8)
k = 0
while True:
    ts = 1_000_000 + k * 10_000_000
    img[...] = k % 256
    before = time.monotonic_ns()
    w.write(T.camera_image_topic("agentview"), ts, T.image_msg(ts, img))
    w.write(T.APPLIED_ACTION, ts, T.applied_action_msg(ts, np.full(7, float(k))))
    print(k, before, time.monotonic_ns(), flush=True)
    k += 1
    time.sleep(0.004)
"""

def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder with size and mtime: proves a read-only operation modified nothing."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def messages_in_complete_chunks(mcap_file: Path) -> int:
    """Independent count: messages inside the Chunk records that are complete in the file."""
    count = 0
    with mcap_file.open("rb") as f:
        try:
            for record in StreamReader(f, emit_chunks=True).records:
                if isinstance(record, Chunk):
                    count += sum(isinstance(r, Message) for r in breakup_chunk(record))
        except McapError:
            pass
    return count


def applied_values(bag: Path) -> list[float]:
    return [msg.points[0].positions[0] for _, _, msg in iter_messages(bag, [T.APPLIED_ACTION])]


@pytest.mark.parametrize("mode", ["timer", "size"])
def test_sigkilled_writer_is_listed_incomplete_and_repair_recovers_flushed_chunks(tmp_path, mode):
    write_synthetic_episode(tmp_path, 5, episode_id="earlier")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps: list[tuple[int, int, int]] = []
    try:
        for line in proc.stdout:
            steps.append(tuple(map(int, line.split())))
            if len(steps) >= 120 and steps[-1][2] - steps[0][1] >= 2_000_000_000:
                break
        live = {e.episode_id: e.status for e in list_episodes(tmp_path) if isinstance(e, EpisodeInfo)}
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        rest, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    assert live == {"earlier": "complete", "killed": "recording"}  # the writer's lock seen from another process
    steps += [tuple(map(int, ln.split())) for ln in rest.split("\n") if ln.strip()]
    assert len(steps) >= 120, err
    printed = len(steps)

    bag = tmp_path / "killed"
    assert not (bag / "metadata.yaml").exists()
    before = snapshot(tmp_path)
    entries = {e.episode_id: e for e in list_episodes(tmp_path) if isinstance(e, EpisodeInfo)}
    assert snapshot(tmp_path) == before  # listing modifies nothing
    assert entries["killed"].status == "needs-repair" and entries["killed"].complete is False
    assert entries["earlier"].status == "complete"
    in_chunks = messages_in_complete_chunks(bag / "killed.mcap")

    report = repair_episode(bag)
    assert report.repaired and report.messages == in_chunks  # every message of every complete chunk
    values = applied_values(bag)
    recovered = len(values)
    assert values == list(range(recovered))  # a gap-free prefix of the episode
    if mode == "timer":
        # The writer's own clock decides, so this holds at any load: every write checks the age of the
        # pending chunk, so a step whose write returned at least FLUSH_INTERVAL_S before a later
        # printed step began is in a complete chunk (the background timer may only flush sooner).
        last_began = steps[-1][1]
        lower = sum(1 for _, _, done in steps if done + FLUSH_INTERVAL_S * 1e9 <= last_began)
        # 8x8 frames: the whole episode is far below the 1 MiB chunk size, so no size flush happened.
        assert (bag / "killed.mcap").stat().st_size < DEFAULT_CHUNK_SIZE // 4
    else:
        # At most one chunk is pending: 64 KiB holds 5 steps of 64x64 rgb8 (12.3 KB) + action.
        lower = printed - 6
    print(f"{mode}: printed {printed} steps, recovered {recovered}, guaranteed lower bound {lower}")
    assert lower > 0
    assert lower <= recovered <= printed + 1
    assert bag_status(bag) == "ok"
    md = read_metadata(bag)
    assert md.complete is False and md.episode_id == "killed"
    with AnyReader([bag]) as reader:
        assert reader.message_count == report.messages + 1  # + the closing metadata message
    ep = load_episode(bag)
    assert ep.num_steps == recovered and ep.proprio.shape == (recovered, 0)
    np.testing.assert_array_equal(ep.frames["agentview"][:, 0, 0, 0], np.arange(recovered) % 256)
    entries = {e.episode_id: e for e in list_episodes(tmp_path)}
    assert entries["killed"].status == "incomplete" and entries["killed"].steps == recovered



class WriterWithoutTimer(EpisodeWriter):
    """The writer with its background timer doing nothing: only the per-write age check can flush."""

    def _flush_loop(self) -> None:
        return


def test_a_write_flushes_the_pending_chunk_once_its_oldest_message_is_flush_interval_old(tmp_path):
    interval = 0.5
    w = WriterWithoutTimer(tmp_path, EpisodeMetadata.new("lift", "x", episode_id="aged"), start_ns=0,
                           flush_interval_s=interval)
    mcap_file = w.mcap_path
    try:
        assert messages_in_complete_chunks(mcap_file) == 1  # the episode metadata, flushed at start
        w.write(T.APPLIED_ACTION, 1, T.applied_action_msg(1, np.zeros(7)))
        written = time.monotonic()
        assert messages_in_complete_chunks(mcap_file) == 1  # young and small: still pending
        time.sleep(max(0.0, written + interval - time.monotonic()) + 0.01)
        w.write(T.APPLIED_ACTION, 2, T.applied_action_msg(2, np.ones(7)))
        # The second write found the pending chunk older than the interval and closed it, both messages in it.
        assert messages_in_complete_chunks(mcap_file) == 3
    finally:
        w.close()


# Writes a few small messages, reports "idle", then writes nothing until it is killed.
IDLE_CHILD = r"""
import sys, time
import numpy as np
from wmpo_core.data import topics as T
from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter
w = EpisodeWriter(sys.argv[1], EpisodeMetadata.new("lift", "x", episode_id="idle"), start_ns=0, flush_interval_s=0.2)
for k in range(5):
    w.write(T.APPLIED_ACTION, 1_000_000 + k, T.applied_action_msg(1_000_000 + k, np.full(7, float(k))))
print("idle", flush=True)
time.sleep(3600)
"""


def test_idle_writer_is_flushed_by_its_timer_and_a_sigkill_then_loses_nothing(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", IDLE_CHILD, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mcap_file = tmp_path / "idle" / "idle.mcap"
    try:
        assert proc.stdout.readline().strip() == "idle", proc.stderr.read()
        idle_at = time.monotonic()
        # No write comes and 5 small messages are far from the size threshold: only the timer can flush.
        # The deadline is generous because a starved thread runs late, not never.
        while messages_in_complete_chunks(mcap_file) < 6 and time.monotonic() - idle_at < 30:
            time.sleep(0.02)
        waited = time.monotonic() - idle_at
        on_disk = messages_in_complete_chunks(mcap_file)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    print(f"idle writer (flush interval 0.2 s): {on_disk - 1} of 5 messages on disk after {waited:.2f} s")
    assert on_disk == 6, f"only {on_disk} of 6 messages reached the file in {waited:.1f} s of idling"
    report = repair_episode(tmp_path / "idle")
    assert report.messages == 6 and applied_values(tmp_path / "idle") == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_fsync_true_syncs_every_chunk_the_closed_bag_and_its_directories(tmp_path, monkeypatch):
    """The calls are observed (the real os.fsync still runs): proof that they happen, not a power cut."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    out = tmp_path / "episodes"
    for fsync in (False, True):
        name = f"fsync-{fsync}"
        synced.clear()
        w = EpisodeWriter(out, EpisodeMetadata.new("lift", "x", episode_id=name), start_ns=0, fsync=fsync,
                          flush_interval_s=None)
        mcap_file = str(w.mcap_path)
        for k in range(3):
            w.write(T.APPLIED_ACTION, k, T.applied_action_msg(k, np.zeros(7)))
            w.flush()
        chunks_before_close = w.stats["flushed_chunks"]
        during_recording = list(synced)
        w.close()
        if not fsync:
            assert synced == []
            continue
        assert chunks_before_close == 4  # the metadata's chunk and one per flush
        # Every chunk is synced before the writer goes on, and the directory entries of the new bag too.
        assert during_recording.count(mcap_file) == chunks_before_close
        assert {str(out), str(out / name)} <= set(during_recording)
        # Closing syncs the file's summary, metadata.yaml and the folder that lists it.
        after_close = synced[len(during_recording):]
        assert mcap_file in after_close and str(out / name / "metadata.yaml") in after_close
        assert after_close[-1] == str(out / name)


def test_truncated_mcap_recovers_exactly_the_complete_chunks(tmp_path):
    bag = write_synthetic_episode(tmp_path, 40, episode_id="cut", flush_interval_s=None, chunk_size=32 * 1024)
    mcap_file = bag / "cut.mcap"
    data = mcap_file.read_bytes()
    mcap_file.write_bytes(data[: int(len(data) * 0.6)])
    expected = messages_in_complete_chunks(mcap_file)
    assert expected > 10
    assert bag_status(bag) == "needs-repair"  # metadata.yaml is there but the file lost its end
    assert [e.status for e in list_episodes(tmp_path)] == ["needs-repair"]
    report = repair_episode(bag)
    assert report.messages == expected and "footer" in report.stopped_by
    md = read_metadata(bag)
    # The label came from the old metadata.yaml; the episode is now marked incomplete.
    assert (md.success, md.complete) == (True, False)
    assert applied_values(bag) == list(range(len(applied_values(bag))))
    assert not list(bag.glob("*.orig")) and not (bag / ".repair").exists()


def test_missing_metadata_yaml_is_repaired_without_losing_a_message(tmp_path):
    bag = write_synthetic_episode(tmp_path, 12, episode_id="nometa")
    with AnyReader([bag]) as reader:
        total = reader.message_count
    (bag / "metadata.yaml").unlink()
    assert bag_status(bag) == "needs-repair"
    assert read_metadata(bag).complete is False
    with pytest.raises(EpisodeError, match="--repair"):
        list(iter_messages(bag))
    report = repair_episode(bag, keep_original=True)
    assert report.messages == total and report.stopped_by.startswith("end of file")
    assert report.kept_original == bag / "nometa.mcap.crashed" and report.kept_original.exists()
    md = read_metadata(bag)
    assert (md.success, md.complete) == (True, False)
    assert load_episode(bag).num_steps == 12
    # Idempotent: a second repair changes nothing.
    before = snapshot(bag)
    again = repair_episode(bag)
    assert not again.repaired and snapshot(bag) == before


def test_interrupted_repair_is_resumed_from_the_original(tmp_path):
    bag = write_synthetic_episode(tmp_path, 10, episode_id="resume")
    (bag / "metadata.yaml").unlink()
    expected = messages_in_complete_chunks(bag / "resume.mcap")
    # State left by a repair killed after renaming the original and writing part of the new file.
    os.replace(bag / "resume.mcap", bag / "resume.mcap.orig")
    (bag / "resume.mcap").write_bytes(b"\x89MCAP0\r\npartial")
    assert bag_status(bag) == "needs-repair"
    report = repair_episode(bag)
    assert report.messages == expected
    assert sorted(p.name for p in bag.iterdir()) == ["metadata.yaml", "resume.mcap"]


def test_corrupt_bags_are_error_entries_naming_the_file_and_the_rest_is_listed(tmp_path):
    write_synthetic_episode(tmp_path, 4, episode_id="good")
    rng = np.random.default_rng(0)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "garbage.mcap").write_bytes(rng.bytes(5000))
    (tmp_path / "stray.mcap").write_bytes(rng.bytes(100))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "empty.mcap").write_bytes(b"\x89MCAP0\r\n")  # crashed before its first chunk
    # Right magic and a metadata.yaml, garbage inside: rosbags cannot open it.
    shutil.copytree(tmp_path / "good", tmp_path / "scrambled")
    (tmp_path / "scrambled" / "good.mcap").write_bytes(b"\x89MCAP0\r\n" + rng.bytes(4000) + b"\x89MCAP0\r\n")

    before = snapshot(tmp_path)
    entries = list_episodes(tmp_path)
    assert snapshot(tmp_path) == before
    by_name = {(e.path.name if isinstance(e, EpisodeError) else e.episode_id): e for e in entries}
    assert isinstance(by_name["good"], EpisodeInfo) and by_name["good"].steps == 4
    assert "garbage/garbage.mcap: not an MCAP file" in str(by_name["garbage.mcap"])
    assert "stray.mcap: MCAP file outside an episode directory" in str(by_name["stray.mcap"])
    assert "empty.mcap: crashed bag with nothing recoverable" in str(by_name["empty.mcap"])
    assert "scrambled/good.mcap: unreadable bag" in str(by_name["good.mcap"])
    for err in (e for e in entries if isinstance(e, EpisodeError)):
        assert "\n" not in str(err)

    results = repair_folder(tmp_path)
    assert all(isinstance(r, EpisodeError) for r in results) and len(results) == 3
    assert any(str(r).startswith(f"{tmp_path}/empty/empty.mcap: nothing recoverable") for r in results)
    # A failed repair puts the original back: nothing renamed, nothing lost.
    assert snapshot(tmp_path).keys() == before.keys()
    with pytest.raises(EpisodeError, match=r"garbage\.mcap: not an MCAP file"):
        repair_episode(tmp_path / "garbage")


def _fill_until_error(writer: EpisodeWriter, limit_steps: int = 100_000) -> EpisodeWriteError:
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # incompressible
    for k in range(limit_steps):
        ts = 10**9 + k * 10**7
        try:
            writer.write(T.camera_image_topic("agentview"), ts, T.image_msg(ts, img))
            writer.write(T.APPLIED_ACTION, ts, T.applied_action_msg(ts, np.full(7, float(k))))
        except EpisodeWriteError as exc:
            return exc
    raise AssertionError("the filesystem never filled up")


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); the RLIMIT_FSIZE test covers EFBIG")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_tmpfs_gives_clear_error_and_keeps_earlier_episodes(tiny_tmpfs, tmp_path):
    for name in ("first", "second"):
        write_synthetic_episode(tiny_tmpfs, 10, episode_id=name)
    writer = EpisodeWriter(tiny_tmpfs, EpisodeMetadata.new("lift", "x", episode_id="full"), start_ns=0,
                           flush_interval_s=None, chunk_size=64 * 1024)
    exc = _fill_until_error(writer)
    assert exc.errno == errno.ENOSPC
    text = str(exc)
    assert text.startswith(f"{tiny_tmpfs}/full/full.mcap: disk full (ENOSPC")
    assert "Kept on disk" in text and "--repair" in text and "\n" not in text
    assert exc.kept_messages > 50
    with pytest.raises(EpisodeWriteError):  # the writer stays stopped
        writer.write(T.APPLIED_ACTION, 0, T.applied_action_msg(0, np.zeros(7)))
    writer.abort()
    for name in ("first", "second"):
        assert load_episode(tiny_tmpfs / name).num_steps == 10
    statuses = {e.episode_id: e.status for e in list_episodes(tiny_tmpfs)}
    assert statuses == {"first": "complete", "second": "complete", "full": "needs-repair"}

    # Repairing on the still-full disk fails cleanly and leaves the crashed bag as it was.
    before = snapshot(tiny_tmpfs)
    with pytest.raises(EpisodeError, match=r"full: repair failed .*original bag is unchanged"):
        repair_episode(tiny_tmpfs / "full")
    assert snapshot(tiny_tmpfs).keys() == before.keys()
    assert {k: v[0] for k, v in snapshot(tiny_tmpfs).items()} == {k: v[0] for k, v in before.items()}

    rescued = shutil.copytree(tiny_tmpfs / "full", tmp_path / "rescued" / "full")
    report = repair_episode(rescued)
    # +1: the metadata message written at start is counted by the writer too.
    assert report.messages >= exc.kept_messages
    assert len(applied_values(rescued)) >= (exc.kept_messages - 1) // 2


RLIMIT_CHILD = r"""
import json, resource, signal, sys
import numpy as np
from wmpo_core.data import topics as T
from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriteError, EpisodeWriter
from wmpo_core.data.episodes import write_synthetic_episode
out = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))
for name in ("first", "second"):
    write_synthetic_episode(out, 10, episode_id=name)
w = EpisodeWriter(out, EpisodeMetadata.new("lift", "x", episode_id="big"), start_ns=0,
                  flush_interval_s=None, chunk_size=64 * 1024)
img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
try:
    for k in range(100_000):
        w.write(T.camera_image_topic("agentview"), 10**9 + k, T.image_msg(10**9 + k, img))
except EpisodeWriteError as exc:
    print(json.dumps({"errno": exc.errno, "message": str(exc), "kept": exc.kept_messages}))
"""


def test_file_size_limit_gives_efbig_error_and_earlier_episodes_load(tmp_path):
    res = subprocess.run([sys.executable, "-c", RLIMIT_CHILD, str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["errno"] == errno.EFBIG
    assert out["message"].startswith(f"{tmp_path}/big/big.mcap: disk full (EFBIG")
    for name in ("first", "second"):
        assert load_episode(tmp_path / name).num_steps == 10
    assert (tmp_path / "big" / "big.mcap").stat().st_size <= 1_500_000
    report = repair_episode(tmp_path / "big")
    assert report.messages >= out["kept"] > 50


def test_live_recording_is_listed_and_never_touched_by_repair(tmp_path):
    writer = EpisodeWriter(tmp_path, EpisodeMetadata.new("lift", "x", episode_id="live"), start_ns=0)
    writer.write(T.APPLIED_ACTION, 5, T.applied_action_msg(5, np.zeros(7)))
    writer.flush()
    before = snapshot(tmp_path)
    [info] = list_episodes(tmp_path)
    assert (info.status, info.steps, info.complete) == ("recording", 1, False)
    assert repair_folder(tmp_path) == []
    with pytest.raises(EpisodeError, match="being recorded by a running writer"):
        repair_episode(tmp_path / "live")
    assert snapshot(tmp_path) == before
    writer.write(T.APPLIED_ACTION, 6, T.applied_action_msg(6, np.ones(7)))
    writer.close()
    [info] = list_episodes(tmp_path)
    assert (info.status, info.steps, info.complete) == ("complete", 2, True)
