"""rar_core: RAR (Restore, Assess, Repeat; CVPR 2026) in pure PyTorch. Never imports ComfyUI."""

__version__ = "0.1.0"
