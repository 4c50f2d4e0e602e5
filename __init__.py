"""ComfyUI entry point of the RAR node pack (V3 API).

ComfyUI imports this file as a package, so everything below uses relative imports. Outside
ComfyUI (pytest collecting from the repo root, a pip-installed rar_core) comfy_api is absent
and this module defines nothing, so it never breaks `import rar_core`.
"""
import logging
import os

try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:
    ComfyExtension = None

# The degraded image the templates in workflows/ open with (their LoadImage nodes name it).
EXAMPLE_IMAGE = "rar_example_degraded.png"
EXAMPLE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rar_core", "assets", "sample_degraded.png")


def install_example_image() -> None:
    """Copy the example into ComfyUI's input folder if no file of that name is there; never raises.

    rar_core's atomic write without overwrite: a user's file of that name is never replaced, even
    one made by a concurrent start.
    """
    try:
        import folder_paths

        from .rar_core.image import write_atomic

        dest = os.path.join(folder_paths.get_input_directory(), EXAMPLE_IMAGE)
        if os.path.exists(dest) or not os.path.isfile(EXAMPLE_SOURCE):
            return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(EXAMPLE_SOURCE, "rb") as f:
            data = f.read()
        write_atomic(dest, lambda out: out.write(data), overwrite=False)
    except FileExistsError:
        pass  # theirs wins
    except Exception as e:  # a missing example must never stop ComfyUI or the pack
        logging.info("RAR: example image not installed (%s)", e)


if ComfyExtension is not None:
    from .nodes import NODES, register_folder

    register_folder()
    install_example_image()

    # rar.js shows each RAR node's round summary (its "text" UI output) on the node after a run.
    WEB_DIRECTORY = "./web"

    class RARExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(NODES)

    async def comfy_entrypoint() -> RARExtension:
        return RARExtension()
