"""The GPU check (run through scripts/gpu_check.sh): an imported miniature OpenVLA-OFT package predicts on
CUDA in bf16, takes GRPO LoRA steps and imagines with a world model on CUDA, and a reward model scores the
imagined trajectories; timings and peak GPU memory are printed as one JSON object.

Steps, each timed:
  1. write a miniature OFT checkpoint in the published layout (bench/bench_import_memory.py's writer), bf16
  2. `wmpo import-openvla` it (on the CPU, as on a workstation) into a signed package
  3. load the package onto the GPU in bf16; one warm-up prediction, then --predictions timed ones; the
     greedy chunk is compared with the same package's prediction on the CPU in bf16 (max abs difference)
  4. GRPO with LoRA on the GPU: sample a batch of action chunks (rollout numerics), then one clipped-GRPO
     step: the ratio must be exactly 1 (the update recomputes what the rollout sampled); then the same step
     with --micro-batch and gradient checkpointing, for its peak memory
  5. imagination on the GPU: a world model of the embedded size (random weights: 64 px frames, c = 4, K = 8)
     and the LoRA policy imagine --batch trajectories of --horizon frames (decoded frames stay on the GPU,
     the policy resizes them there to its 224 px); then a reward model of the embedded size scores them
  6. the policy node's inference loop: the robot's PolicyNode (wmpo_ros, rclpy; skipped with the reason when
     they are not installed) loads the signed package with `vla.device` = the device and `vla.dtype`
     bfloat16, a camera publisher in the same process sends 224 px frames at --node-rate-hz for
     --node-seconds over DDS (localhost), and the chunks and the node's ~/latency_ms are collected
Exit 0: every step ran and the checks held; 1: a check failed; 2: no usable CUDA device (nothing ran).
``--device cpu`` rehearses every step on the CPU (no peak GPU memory), so the script itself is tested
without a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_GPU_EXIT = 2


def _cuda_or_exit(device: str):
    import torch

    if device == "cpu":  # the rehearsal
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only torch build)"
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, CUDA build: {built}); this check needs "
              "a machine with an NVIDIA GPU and a CUDA build of torch. Nothing was run.", file=sys.stderr)
        raise SystemExit(NO_GPU_EXIT)
    from wmpo_core.policy.placement import resolve_device

    try:
        return resolve_device(device)
    except ValueError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        raise SystemExit(NO_GPU_EXIT) from None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default cuda); cpu: a rehearsal")
    parser.add_argument("--hidden", type=int, default=512, help="Llama hidden size of the miniature (default 512)")
    parser.add_argument("--layers", type=int, default=4, help="Llama layers of the miniature (default 4)")
    parser.add_argument("--batch", type=int, default=8, help="observations in the GRPO step (default 8)")
    parser.add_argument("--micro-batch", type=int, default=2, help="rows per forward in the second GRPO step")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--predictions", type=int, default=20, help="timed predictions (default 20)")
    parser.add_argument("--horizon", type=int, default=16, help="imagined frames per trajectory (default 16)")
    parser.add_argument("--node-seconds", type=float, default=10.0, help="how long the policy node runs (default 10)")
    parser.add_argument("--node-rate-hz", type=float, default=10.0, help="camera and control rate of the node step")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args(argv)
    device = _cuda_or_exit(args.device)

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_import_memory import write_checkpoint

    from wmpo_core.policy.commands.import_openvla import import_openvla
    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.lora import LoRASettings, apply_lora, trainable_parameters
    from wmpo_core.policy.placement import place_policy
    from wmpo_core.policy.training_options import enable_gradient_checkpointing
    from wmpo_core.registry.signing import generate_keypair
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.rl.grpo import GRPOBatch, GRPOConfig, grpo_update
    from wmpo_core.rl.trainer_imagination import GRPOPolicy, PolicyLogProbs
    from wmpo_core.world_model.imagine import VLAImaginationPolicy, imagine_group
    from wmpo_core.world_model.model import WorldModel, WorldModelSettings, make_schedulers
    from wmpo_core.world_model.transformer import VideoDiffusionTransformer
    from wmpo_core.world_model.vae import make_tiny_vae

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (rehearsal)"
    result: dict = {"device": name, "torch": torch.__version__,
                    "cuda": torch.version.cuda, "miniature": {"hidden": args.hidden, "layers": args.layers}}
    failures: list[str] = []
    instruction = "lift the cube"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        result["miniature"]["weights_mb"] = write_checkpoint(root / "ckpt", args.hidden, args.layers, "bfloat16") / 2**20
        keys = generate_keypair(root / "keys")
        t1 = time.perf_counter()
        import_openvla(root / "ckpt", root / "pkg", keys.private_key, variant="oft", chunk_size=8)
        result["import_s"] = time.perf_counter() - t1
        result["write_checkpoint_s"] = t1 - t0

        # ---- predict on the GPU in bf16, against the CPU in bf16
        rng = np.random.default_rng(0)
        image = {"agentview": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)}
        cpu_chunk = load_package(root / "pkg").eval().predict_chunk(image, instruction)
        _reset_peak(device)
        (policy, load_s) = _timed(lambda: place_policy(load_package(root / "pkg"), str(device), "bfloat16").eval(),
                                  device)
        result["load_s"] = load_s
        _, result["first_predict_s"] = _timed(lambda: policy.predict_chunk(image, instruction), device)
        times = []
        for _ in range(args.predictions):
            gpu_chunk, seconds = _timed(lambda: policy.predict_chunk(image, instruction), device)
            times.append(seconds)
        result["predict_ms"] = {"median": 1e3 * statistics.median(times), "max": 1e3 * max(times)}
        result["predict_peak_mb"] = _peak_mb(device)
        result["chunk_shape"] = list(gpu_chunk.shape)
        result["device_vs_cpu_bf16_max_abs_diff"] = float(np.abs(gpu_chunk - cpu_chunk).max())
        if gpu_chunk.shape != (8, 7) or not np.isfinite(gpu_chunk).all():
            failures.append(f"predict: chunk of shape {gpu_chunk.shape}, finite {np.isfinite(gpu_chunk).all()}")

        # ---- GRPO with LoRA on the GPU
        apply_lora(policy, LoRASettings(rank=args.lora_rank))
        result["lora"] = {"rank": args.lora_rank, "trainable_params": trainable_parameters(policy)}
        images = [{"agentview": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)} for _ in range(args.batch)]
        batch = policy.prepare_batch(images, [instruction] * args.batch).to(device)
        config = GRPOConfig(learning_rate=1e-4, minibatch_size=args.batch, temperature=1.6)
        policy.eval()
        generator = torch.Generator(device=device).manual_seed(0)
        (tokens, logp_old), result["rollout_sample_s"] = _timed(
            lambda: policy.sample(batch, temperature=config.temperature, generator=generator), device)
        advantages = torch.tensor([1.0, -1.0] * (args.batch // 2) + [0.5] * (args.batch % 2), device=device)
        grpo_batch = GRPOBatch(batch, tokens, logp_old, advantages, torch.ones_like(logp_old))
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.learning_rate)
        grpo_policy = GRPOPolicy(PolicyLogProbs(policy))
        policy.train()
        for name, micro in (("grpo_step", 0), ("grpo_step_micro_checkpointed", args.micro_batch)):
            if micro:
                enable_gradient_checkpointing(policy)
            config.micro_batch = micro
            _reset_peak(device)
            stats, seconds = _timed(lambda: grpo_update(grpo_policy, optimizer, grpo_batch, config), device)
            result[name] = {"seconds": seconds, "peak_mb": _peak_mb(device), "micro_batch": micro,
                            "ratio_min": stats["ratio_min"], "ratio_max": stats["ratio_max"],
                            "grad_norm": stats["grad_norm"], "loss": stats["loss"]}
            if not np.isfinite(stats["loss"]) or not np.isfinite(stats["grad_norm"]):
                failures.append(f"{name}: loss {stats['loss']}, grad norm {stats['grad_norm']}")
        first = result["grpo_step"]
        if first["ratio_min"] != 1.0 or first["ratio_max"] != 1.0:
            failures.append(f"grpo_step: ratio [{first['ratio_min']}, {first['ratio_max']}] before the first step, "
                            "expected exactly 1 (rollout and update numerics differ on this GPU)")

        # ---- imagination and reward scoring on the GPU
        torch.manual_seed(0)
        noise, sampler = make_schedulers()
        world_model = WorldModel(make_tiny_vae().eval(), VideoDiffusionTransformer().eval(), noise, sampler,
                                 WorldModelSettings()).to(device)
        reward = RewardModel.tiny()
        reward.classifier.to(device).eval()
        start = rng.integers(0, 256, (1, 1, 64, 64, 3), dtype=np.uint8)
        adapter = VLAImaginationPolicy(policy.eval(), "agentview", temperature=1.6)
        _reset_peak(device)
        imagined, seconds = _timed(lambda: imagine_group(world_model, adapter, start, instruction, args.horizon,
                                                         group_size=args.batch), device)
        result["imagination"] = {"trajectories": args.batch, "horizon": args.horizon, "seconds": seconds,
                                 "peak_mb": _peak_mb(device), "frames_shape": list(imagined.frames.shape)}
        if imagined.tokens.device.type != device.type:
            failures.append(f"imagination: tokens on {imagined.tokens.device}, expected {device}")
        scores, seconds = _timed(lambda: reward.trajectory_scores(list(imagined.frames)), device)
        result["reward_scoring"] = {"trajectories": len(scores), "seconds": seconds}
        if not np.isfinite(scores).all():
            failures.append(f"reward scoring: scores {scores}")

        # ---- the policy node's inference loop, through DDS
        policy = world_model = reward = optimizer = None  # the node loads its own copy  # type: ignore[assignment]
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _reset_peak(device)
        node = _policy_node_loop(root / "pkg", keys.public_key, device, args.node_seconds, args.node_rate_hz)
        node["peak_mb"] = _peak_mb(device)
        result["policy_node"] = node
        if "skipped" not in node and (node["chunks"] < 2 or not node["finite"] or node["chunk_shape"] != [8, 7]):
            failures.append(f"policy node: {node}")
    result["failures"] = failures
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if failures else 0


def _policy_node_loop(package: Path, public_key: Path, device, seconds: float, rate_hz: float) -> dict:
    """Run the robot's policy node on ``package`` at ``device`` in this process, feed it camera frames for
    ``seconds`` and return what it published: chunk count and shape, and its latency (camera stamp to
    published chunk) in ms. ``{"skipped": reason}`` without rclpy / wmpo_ros."""
    import os
    import threading

    import numpy as np

    try:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float64, String
        from trajectory_msgs.msg import JointTrajectory
        from wmpo_ros.common import (
            ACTION_CHUNK_TOPIC,
            COMMAND_QOS,
            IMAGE_QOS,
            INSTRUCTION_TOPIC,
            LATCHED_QOS,
            image_topic,
            ns_to_stamp,
            numpy_to_image,
            trajectory_to_chunk,
        )
        from wmpo_ros.policy_node import PolicyNode
    except ImportError as exc:
        return {"skipped": f"needs rclpy and the wmpo_ros package (the robot's environment): {exc}"}

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    context = Context()
    rclpy.init(context=context)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    chunks: list = []
    latencies: list[float] = []
    params = [Parameter("backend", value="vla"), Parameter("policy_path", value=str(package)),
              Parameter("policy_root", value=str(package.parent)), Parameter("trusted_keys", value=str(public_key)),
              Parameter("cameras", value=["agentview"]), Parameter("control_rate_hz", value=float(rate_hz)),
              Parameter("vla.device", value=str(device)), Parameter("vla.dtype", value="bfloat16")]
    t0 = time.perf_counter()
    node = PolicyNode(context=context, parameter_overrides=params)
    load_s = time.perf_counter() - t0
    probe = rclpy.create_node("gpu_check_camera", context=context)
    try:
        probe.create_subscription(JointTrajectory, ACTION_CHUNK_TOPIC, chunks.append, COMMAND_QOS)
        probe.create_subscription(Float64, "/policy_node/latency_ms", lambda m: latencies.append(m.data), COMMAND_QOS)
        camera = probe.create_publisher(Image, image_topic("agentview"), IMAGE_QOS)
        probe.create_publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS).publish(String(data="lift the cube"))
        executor.add_node(node)
        executor.add_node(probe)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        size = int(node.backend.image_size[0]) if node.backend.image_size else 224
        frames = np.random.default_rng(1).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
        period = 1.0 / rate_hz
        end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < end:
            camera.publish(numpy_to_image(frames[i % len(frames)], ns_to_stamp(time.time_ns()), "agentview"))
            i += 1
            time.sleep(period)
        time.sleep(0.5)
    finally:
        executor.shutdown()
        node.destroy_node()
        probe.destroy_node()
        rclpy.shutdown(context=context)
    arrays = [trajectory_to_chunk(m, allow_nonfinite=True) for m in chunks]
    return {"seconds": seconds, "frames_sent": i, "load_s": load_s, "chunks": len(arrays),
            "chunk_shape": list(arrays[0].shape) if arrays else None,
            "finite": bool(arrays) and all(np.isfinite(a).all() for a in arrays),
            "latency_ms": ({"median": statistics.median(latencies), "max": max(latencies)} if latencies else None)}


if __name__ == "__main__":
    sys.exit(main())
