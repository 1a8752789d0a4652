"""The picture the test Space draws, importable by the Space (its own venv) and by the tests."""

import hashlib

from PIL import Image, ImageDraw


def draw(prompt: str, seed: int, width: int, height: int) -> Image.Image:
    """Colours from the prompt and seed, so a wrong seed or a mixed-up job shows in the pixels."""
    digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    image = Image.new("RGB", (width, height), tuple(digest[:3]))
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, 3 * width // 4, 3 * height // 4),
                                    fill=tuple(digest[3:6]))
    return image
