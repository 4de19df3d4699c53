"""`wmpo keygen`, `wmpo export`, `wmpo verify`, `wmpo push` (one module each): sign policies and ship
them to robots. What they share is in ``common``.

    wmpo keygen --out ~/.config/wmpo/keys
    wmpo export runs/grpo-3/policy --out pkgs/v4 --key ~/.config/wmpo/keys/wmpo_policy_signing.pem --parent v3
    wmpo verify pkgs/v4 --public-key ~/.config/wmpo/keys/wmpo_policy_signing.pub.pem
    wmpo push pkgs/v4 --to robot1:/opt/wmpo/policies --public-key KEY.pub.pem --node /policy

`push` asks the policy node to load the package over ROS 2, which needs the ros extra
(``pip install 'wmpo[ros]'``); `--no-load` only copies.
"""
