"""Training: data loading (data.py); stage 1 / stage 2 loops and Ray launch come next."""
