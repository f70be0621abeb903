"""`rtserve bench`: workloads that measure the engine against a baseline run in the same process."""
