"""ComfyUI entry point of the RAR node pack (V3 API).

ComfyUI imports this file as a package, so everything below uses relative imports. Outside
ComfyUI (pytest collecting from the repo root, a pip-installed rar_core) comfy_api is absent
and this module defines nothing, so it never breaks `import rar_core`.
"""
try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes import NODES, register_folder

    register_folder()

    class RARExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(NODES)

    async def comfy_entrypoint() -> RARExtension:
        return RARExtension()
