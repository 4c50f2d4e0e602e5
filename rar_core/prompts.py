"""The LQA's conversation: system text, image markers and the two question kinds (Sec. 5.6).

Strings follow the official release (DepictQA `vicuna_v1` template, `quality_single_A_noref` and
`quality_compare_noref` tasks) so converted official weights see the prompts they were trained on.
"""

from __future__ import annotations

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions. As an AI assistant, "
    "you are performing an image quality assessment task."
)
SUFFIX = " Answer the question using a single word or phrase."

# Identification: "what is the main degradation?" (official run.py list; the demo uses the last).
IDENTIFY = tuple(
    q + SUFFIX
    for q in (
        "Determine the leading ONE degradation in the evaluated image.",
        "Determine the most impactful ONE distortion in the evaluated image.",
        "Highlight the most significant ONE distortion in the evaluated image.",
        "Identify the chief ONE degradation in the evaluated image.",
        "Identify the most critical ONE distortion in the evaluated image.",
        "Identify the most notable ONE distortion in the evaluated image's quality.",
        "In terms of image quality, what is the most glaring ONE issue with the evaluated image?",
        "In the evaluated image, what ONE distortion is most detrimental to image quality?",
        "Pinpoint the foremost ONE image quality issue in the evaluated image.",
        "What ONE distortion is most apparent in the evaluated image?",
        "What ONE distortion is most evident in the evaluated image?",
        "What ONE distortion is most prominent in the evaluated image?",
        "What ONE distortion is most prominent when examining the evaluated image?",
        "What ONE distortion most detrimentally affects the overall quality of the evaluated image?",
        "What ONE distortion most notably affects the clarity of the evaluated image?",
        "What ONE distortion most significantly affects the evaluated image?",
        "What ONE distortion stands out in the evaluated image?",
        "What ONE quality degradation is most apparent in the evaluated image?",
        "What critical ONE quality degradation is present in the evaluated image?",
        "What is the foremost ONE distortion affecting the evaluated image's quality?",
        "What is the leading ONE distortion in the evaluated image?",
        "What is the most critical ONE image quality issue in the evaluated image?",
        "What is the most severe ONE degradation observed in the evaluated image?",
        "What is the primary ONE degradation observed in the evaluated image?",
    )
)

# Verification: "is Image A (new) better than Image B (previous)?" (official 20 templates).
COMPARE = tuple(
    q + SUFFIX
    for q in (
        "Make a judgment on which image, Image A or Image B, you consider to be of better quality.",
        "Assess the quality of Image A and Image B, and indicate which one you find to be better.",
        "Which image do you believe has better overall quality: Image A or Image B?",
        "Evaluate Image A and Image B, and select the one that you feel has better quality.",
        "Determine which image, Image A or Image B, you perceive to have better quality.",
        "Compare the quality of Image A and Image B, and determine which one you prefer.",
        "Between Image A and Image B, which image do you perceive to have better quality overall?",
        "In your opinion, which image demonstrates superior quality: Image A or Image B?",
        "Determine which image exhibits higher quality between Image A and Image B.",
        "Which of the two images, Image A or Image B, appears to have superior quality to you?",
        "Which image, Image A or Image B, do you think displays better quality when compared?",
        "Differentiate between Image A and Image B in terms of overall quality and decide which one is superior.",
        "Can you compare the quality of Image A and Image B and decide which one is better?",
        "Compare the general quality of Image A and Image B, and state your preference.",
        "Decide which image, Image A or Image B, you think possesses higher quality.",
        "Between Image A and Image B, which image do you think has better quality overall?",
        "Assess the quality of Image A and Image B, and choose the one you believe is superior.",
        "Which of the two images, Image A or Image B, do you consider to be of better quality?",
        "Evaluate the quality of Image A and Image B, and decide which one is superior.",
        "Which image stands out to you as having better quality: Image A or Image B?",
    )
)
COMPARE_ANSWERS = ("Image A", "Image B")
# The official stop rule: the comparison answer contains "Image B" (the previous latent wins).
REJECT = "Image B"


def is_improvement(verdict: str) -> bool:
    """Does a comparison answer (Image A = candidate, Image B = previous) accept the candidate?"""
    return REJECT not in verdict


def is_clean(answer: str) -> bool:
    """Does an identification answer call the image clean?"""
    return answer.strip().lower().startswith("clean")


def identify_segments(question: str) -> list[str]:
    """Text segments around one image slot (`None` marks where the image embeddings go)."""
    return [f"{SYSTEM}\n\n </s> Image: <Img>", None, f"</Img>\n\n </s> USER: {question}\n   ASSISTANT: "]


def compare_segments(question: str) -> list[str]:
    return [
        f"{SYSTEM}\n\n </s> Image A: <Img-A>",
        None,
        "</Img-A>\n\n </s> Image B: <Img-B>",
        None,
        f"</Img-B>\n\n </s> USER: {question}\n   ASSISTANT: ",
    ]


def all_text() -> list[str]:
    """Every string the LQA is asked; used to build the compact model's word vocabulary."""
    return [SYSTEM, *IDENTIFY, *COMPARE, *COMPARE_ANSWERS, "Image: <Img> </Img> Image A: <Img-A> </Img-A>",
            "Image B: <Img-B> </Img-B> USER: ASSISTANT:"]
