"""Pixel-space video world model: VAE (vae.py), diffusion transformer (transformer.py), the two composed
with diffusers schedulers (model.py), training (train.py), imagination (imagine.py) and fidelity
evaluation (evaluate.py). Nothing here imports ROS; importing the package itself loads no torch.
"""
