"""The chat-style prompt template, in one place: training, evaluation and `deepmolm predict` use it."""

from __future__ import annotations

IMAGE = "<image>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (PAD, END, USER, ASSISTANT, IMAGE)


def format_prompt(instruction: str) -> str:
    """What the model reads before it answers; the one <image> is expanded to the visual tokens."""
    return f"{USER}\n{IMAGE}\n{instruction.strip()}\n{ASSISTANT}\n"


def format_response(response: str) -> str:
    return f"{response.strip()}{END}"
