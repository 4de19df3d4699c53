"""Video success classifier (VideoMAE, one logit): model.py scores clips and trajectories, train.py
labels clips, trains with BCE and calibrates the threshold tau. Importing the package loads no torch.
"""
