"""Two-tower CALRec training: fused loss, sharded jitted step, checkpoints, the training loop."""
