"""The `vla` policy backend and the policy slot, in process (no DDS): real signed packages
(tests/policy_packages.py), real verification, real model loading and inference."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")


from policy_packages import (  # noqa: E402
    BAD_KINDS,
    BAD_REASONS,
    INSTRUCTION,
    build_package,
    camera_frames,
    expected_chunks,
    make_bad_package,
    make_keys,
)

# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine more threads make a tiny model many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def packages(tmp_path_factory, keys):
    root = tmp_path_factory.mktemp("pkgs")
    trusted, untrusted = keys
    # vla-test-1 is a child of vla-test-0, and so is every bad package (copies of it): refused for its own reason only
    good = [build_package(root / f"good{i}", seed=i, version=f"vla-test-{i}", key=trusted,
                          parent=None if i == 0 else "vla-test-0") for i in range(2)]
    bad = {kind: make_bad_package(kind, good[1], root / f"bad-{kind}", trusted, untrusted) for kind in BAD_KINDS}
    return good, bad


def _options(pkg, keys, **extra):
    return {"policy_path": str(pkg), "trusted_keys": str(keys[0].public_key), "num_threads": 0, **extra}


def test_backend_predicts_exactly_what_wmpo_eval_predicts(packages, keys):
    from wmpo_ros.policy_backends import make_policy_backend

    good, _ = packages
    backend = make_policy_backend("vla", _options(good[0], keys))
    assert backend.version == "vla-test-0" and backend.chunk_size == 8 and backend.action_dim == 7
    assert backend.cameras == ("agentview",) and backend.image_size is None
    assert backend.describe()["path"] == str(good[0])
    images = camera_frames()
    want = expected_chunks(good[0], images)
    for img, expected in zip(images, want, strict=True):
        got = backend.predict_chunk({"agentview": img}, INSTRUCTION, np.zeros(9), None)
        assert got.shape == (8, 7)
        np.testing.assert_array_equal(got, expected)
    # the packages really differ: a swap is visible in the chunks
    other = expected_chunks(good[1], images)
    assert all(not np.array_equal(a, b) for a, b in zip(want, other, strict=True))
    assert backend.warm_up() > 0
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.predict_chunk({"agentview": images[0]}, INSTRUCTION, None, None)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_packages_are_refused_with_the_reason(packages, keys, kind):
    from wmpo_ros.policy_backends.vla import VLAPolicyBackend

    with pytest.raises(ValueError) as info:
        VLAPolicyBackend(_options(packages[1][kind], keys))
    assert BAD_REASONS[kind] in str(info.value) and str(packages[1][kind]) in str(info.value)


def test_no_trusted_key_or_no_path_refuses(packages, keys):
    from wmpo_ros.policy_backends.vla import VLAPolicyBackend

    with pytest.raises(ValueError, match="parameter 'trusted_keys' is empty"):
        VLAPolicyBackend(_options(packages[0][0], keys, trusted_keys=""))
    with pytest.raises(ValueError, match="parameter 'policy_path': empty"):
        VLAPolicyBackend(_options("", keys))
    with pytest.raises(ValueError, match="no trusted public key found"):
        VLAPolicyBackend(_options(packages[0][0], keys, trusted_keys=str(packages[0][0])))  # a folder without keys


def test_proprio_policy_names_joint_states(tmp_path, keys):
    from wmpo_ros.policy_backends import PolicyError
    from wmpo_ros.policy_backends.vla import VLAPolicyBackend

    pkg = build_package(tmp_path / "proprio", seed=3, version="vla-proprio", key=keys[0], proprio_dim=3)
    backend = VLAPolicyBackend(_options(pkg, keys))
    img = {"agentview": camera_frames(1)[0]}
    with pytest.raises(PolicyError, match="joint_states: policy vla-proprio needs proprio of dimension 3"):
        backend.predict_chunk(img, INSTRUCTION, None, None)
    with pytest.raises(PolicyError, match="joint_states: 9 positions, policy vla-proprio expects 3"):
        backend.predict_chunk(img, INSTRUCTION, np.zeros(9), None)
    assert backend.predict_chunk(img, INSTRUCTION, np.array([0.1, 0.2, 0.3]), None).shape == (8, 7)
    with pytest.raises(PolicyError, match="lacks camera"):
        backend.predict_chunk({"wrist": img["agentview"]}, INSTRUCTION, np.zeros(3), None)


class _Host:
    """The two members of the policy node the slot uses: the backend reference and its swap."""

    def __init__(self, backend):
        self.backend = backend
        self.swaps = []

    def swap_backend(self, new, close_old=True):
        old, self.backend = self.backend, new
        self.swaps.append((old.version, new.version))
        if close_old:
            old.close()
        return old


def test_slot_loads_refuses_and_rolls_back(packages, keys):
    from wmpo_ros.policy_backends.vla import VLAPolicyBackend
    from wmpo_ros.policy_swap import PolicySlot

    good, bad = packages
    host = _Host(VLAPolicyBackend(_options(good[0], keys)))
    results = []
    slot = PolicySlot(host, {"num_threads": 0}, cameras=["agentview"], on_result=results.append)
    trusted = str(keys[0].public_key)
    try:
        assert slot.active_path == str(good[0]) and slot.previous_version is None
        for kind, path in bad.items():
            result = slot.load(str(path), trusted, timeout=60)
            assert not result.ok and BAD_REASONS[kind] in result.message, (kind, result.message)
            assert result.version == "vla-test-0" and not result.swapped
        assert host.swaps == [] and slot.active_path == str(good[0])

        result = slot.load(str(good[1]), trusted, timeout=60)
        assert result.ok and result.swapped and result.version == "vla-test-1", result.message
        assert {"verify_load", "warm_up", "total"} <= set(result.timings)
        assert host.backend.version == "vla-test-1" and slot.previous_version == "vla-test-0"
        assert host.backend.policy is not None and slot.active_path == str(good[1])

        assert slot.load(str(good[1]), trusted, timeout=60).message.endswith("already active; nothing swapped")
        assert not slot.load("", trusted, timeout=60).ok
        refused = slot.load(str(good[0]), "", timeout=60)
        assert not refused.ok and "trusted_keys' is empty" in refused.message

        back = slot.rollback().result(60)
        assert back.ok and back.kind == "rollback" and host.backend.version == "vla-test-0", back.message
        assert slot.active_path == str(good[0]) and slot.previous_version is None
        again = slot.rollback().result(60)
        assert not again.ok and "no previous version" in again.message
        assert host.swaps == [("vla-test-0", "vla-test-1"), ("vla-test-1", "vla-test-0")]
        assert len(results) == len(bad) + 6  # every operation reported
    finally:
        slot.close()


def test_slot_refuses_a_policy_needing_a_camera_the_node_lacks(tmp_path, packages, keys):
    from wmpo_ros.policy_backends.vla import VLAPolicyBackend
    from wmpo_ros.policy_swap import PolicySlot

    pkg = build_package(tmp_path / "wrist", seed=4, version="vla-wrist", key=keys[0], parent="vla-test-0",
                        cameras=["agentview", "wrist"])
    host = _Host(VLAPolicyBackend(_options(packages[0][0], keys)))
    slot = PolicySlot(host, {}, cameras=["agentview"], policy_root=str(tmp_path))
    try:
        result = slot.load(str(pkg), str(keys[0].public_key), timeout=60)
        assert not result.ok and "needs camera(s) ['wrist']" in result.message and host.swaps == []
    finally:
        slot.close()
