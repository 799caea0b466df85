"""Request stages: safety checks, the response cache — one seam (base.py)."""
