"""`wmpo` subcommands that need ROS 2 (registered through the wmpo.commands entry point)."""
