"""The Kubernetes training launcher: `training.sft` as an Indexed Job of N pods x M processes."""
