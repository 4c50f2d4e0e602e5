"""Custom socket types of the pack."""
from comfy_api.latest import io

RarModel = io.Custom("RAR_MODEL")            # nodes.model.RARHandle
RarAssessment = io.Custom("RAR_ASSESSMENT")  # rar_core Assessment, tensors on intermediate_device()

CATEGORY = "RAR"
