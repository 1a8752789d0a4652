"""A small Space for the real ``gradio`` servers the tests start: ``python space_app.py PORT CALLS_LOG``.

It runs in a Gradio version's own virtualenv (``venvs.py``), not in the project's, so it imports
nothing from Forgeline. It draws a PIL image the tests can redraw (``drawing.py`` is the same
code), takes a FLUX-style seed slider that stops at 2**31-1, serves one call at a time, and
appends every call's inputs to CALLS_LOG so a test can see what reached the Space.
"""

import json
import sys
from pathlib import Path

import gradio as gr

sys.path.insert(0, str(Path(__file__).parent))
from drawing import draw  # noqa: E402  (beside this file, on purpose: no package import)

MAX_SEED = 2**31 - 1


def generate(prompt, negative_prompt, seed, randomize_seed, width, height, steps):
    with open(CALLS_LOG, "a") as log:
        log.write(json.dumps({"prompt": prompt, "negative_prompt": negative_prompt, "seed": seed,
                              "randomize_seed": randomize_seed, "width": width, "height": height,
                              "steps": steps}) + "\n")
    if "forbidden" in prompt:
        raise gr.Error("NSFW content detected. Please try again with a different prompt.")
    if "crash" in prompt:
        raise gr.Error("The worker ran out of memory")
    return draw(prompt, int(seed), int(width), int(height)), seed


with gr.Blocks() as demo:
    prompt = gr.Textbox(label="Prompt")
    negative = gr.Textbox(label="Negative prompt")
    seed = gr.Slider(label="Seed", minimum=0, maximum=MAX_SEED, step=1, value=0)
    randomize = gr.Checkbox(label="Randomize seed", value=True)
    width = gr.Slider(label="Width", minimum=64, maximum=1024, step=8, value=512)
    height = gr.Slider(label="Height", minimum=64, maximum=1024, step=8, value=512)
    steps = gr.Slider(label="Number of inference steps", minimum=1, maximum=50, step=1, value=4)
    image = gr.Image(label="Result", type="pil", format="png")
    used_seed = gr.Number(label="Seed used")
    button = gr.Button("Run")
    button.click(generate, [prompt, negative, seed, randomize, width, height, steps], [image, used_seed],
                 api_name="generate", concurrency_limit=1)

if __name__ == "__main__":
    port, CALLS_LOG = int(sys.argv[1]), sys.argv[2]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, show_error=True, prevent_thread_lock=False)
