"""Capacity planning: memory per device, FLOPs and step time of a CALRec train step before running it."""
