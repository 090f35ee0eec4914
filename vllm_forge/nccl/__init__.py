"""NCCL: the log diagnosis, the doctor (host and in-image facts), the all-reduce tests."""
