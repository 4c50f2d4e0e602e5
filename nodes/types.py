"""Custom socket types of the pack, and the tooltips that the nodes share."""
from comfy_api.latest import io

RarModel = io.Custom("RAR_MODEL")            # nodes.model.RARHandle
RarAssessment = io.Custom("RAR_ASSESSMENT")  # rar_core Assessment, tensors on intermediate_device()

CATEGORY = "RAR"

# One text per input or output that several nodes share: what it is, its range, what the paper uses.
TIPS = {
    "rar_model": "The RAR model from RAR Model Loader: the LQA assessor (A_I adapter + language model), the "
                 "connector A_Q and the UIR restorer (plus its own codec for the compact model).",
    "rar_model_out": "The loaded RAR model. Connect it to every other RAR node.",
    "image": "The image(s) to restore: any size of at least 16 px a side, RGB (alpha is dropped). Every image "
             "of a batch is restored and stops on its own.",
    "latent": "A LATENT from RAR Latent Encode (compact model), or from VAE Encode with the SD3.5 VAE "
              "(official tier). Latents of the other codec are refused.",
    "max_rounds": "Most restore-assess rounds per image (1-{max}). adaptive and once stop earlier, as soon as "
                  "the LQA prefers the previous latent. The paper's released code runs up to 4; its adaptive "
                  "stopping averages 2.4 rounds.",
    "steps": "Euler steps of each restoration round (1-50). Every round runs the whole degraded-to-clean flow "
             "from the current latent, so there is no noise and no seed. The paper uses 4.",
    "mode": "adaptive (the paper): assess, restore and verify every round; roll back and stop when the LQA "
            "prefers the previous latent. once: assess only before the first round, verify every round. "
            "fixed: exactly max_rounds rounds, never verified.",
    "protocol": "demo (default): the official demo's loop, up to max_rounds restorations kept. paper-eval: the "
                "paper's evaluation script, which discards its last round's restoration (at most max_rounds - 1 "
                "kept) and draws its questions from the prompt lists.",
    "vae": "The SD3.5 VAE, for the official tier only. Leave it unconnected for the compact model, which has "
           "its own codec.",
    "latent_out": "The restored latent: for each image, its last accepted round (the input where no round was "
                  "accepted). Decode with RAR Latent Decode (compact) or VAE Decode (official tier).",
    "rounds": "Accepted rounds: the most over the batch (0 when the first round was already rejected).",
    "trace": "JSON, one entry per image: its accepted rounds and, per round, the LQA's answer, the verify "
             "verdict, whether the round was accepted and the seconds per stage. Show it with Preview Any.",
}
