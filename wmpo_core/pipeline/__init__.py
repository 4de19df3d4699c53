"""The pipeline of WMPO, defined once: `wmpo demo`, `wmpo loop` and `wmpo compare` compose these steps.

- :mod:`~wmpo_core.pipeline.steps`: collect (through ROS or directly), link data, world model
  (pretrain / align), reward model and its threshold, GRPO in imagination, export, push, evaluate,
  gate; each step with its inputs, the keys of its result and its resumable ``stage.json`` marker.
- :mod:`~wmpo_core.pipeline.recipe`: the task's recipe (configs, camera, how the reward model
  trains), read from one place by all three commands.
- :mod:`~wmpo_core.pipeline.runner`: running a step once, and `wmpo` commands as subprocesses.
- :mod:`~wmpo_core.pipeline.compare`: the results table's trained methods as a composition.
- :mod:`~wmpo_core.pipeline.guard`, :mod:`~wmpo_core.pipeline.versions`: the simulator guard of robot
  mode, and the chain of versions a robot ran.
"""
