"""ComfyUI V3 nodes for RAR: thin adapters over rar_core (imported only when ComfyUI loads the pack)."""
from .loop import RARIterate, RARLoop, RARRestoreImage
from .model import register_folder
from .stages import RARAssess, RARLatentDecode, RARLatentEncode, RARModelLoader, RARRestore, RARVerifyGate

NODES = [RARModelLoader, RARLatentEncode, RARAssess, RARRestore, RARVerifyGate, RARLoop, RARIterate,
         RARLatentDecode, RARRestoreImage]

__all__ = ["NODES", "register_folder"]
