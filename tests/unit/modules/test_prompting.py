"""Prompt presets: Seg-Zero's and VisionReasoner's texts character for character, query normalisation included."""

from __future__ import annotations

import dataclasses

import pytest

from samr1.datamodules.synthetic import make_shapes_sample
from samr1.modules.loading import load_processor
from samr1.modules.prompting import DEFAULT_PROMPT, PROMPTS, PromptBuilder, render_prompt, resolve_prompt

# Seg-Zero's text, as its evaluation script builds it for the query "The Man's Red Umbrella.".
SEGZERO_UMBRELLA = (
    "Please find 'the man's red umbrella' with bbox and points.Compare the difference between objects and find "
    "the most closely matched one.Output the thinking process in <think> </think> and final answer in <answer> "
    "</answer> tags.Output the one bbox and points of two largest inscribed circles inside the interested object "
    "in JSON format.i.e., <think> thinking process here </think><answer>{'bbox': [10,100,200,210], "
    "'points_1': [30,110], 'points_2': [35,180]}</answer>"
)

VISIONREASONER_TAIL = (
    " with bboxs and points.Compare the difference between object(s) and find the most closely matched "
    "object(s).Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "Output the bbox(es) and point(s) inside the interested object(s) in JSON format.i.e., <think> thinking "
    'process here </think><answer>[{"bbox_2d": [10,100,200,210], "point_2d": [30,110]}, '
    '{"bbox_2d": [225,296,706,786], "point_2d": [302,410]}]</answer>'
)


def test_presets_exist():
    assert {"samr1", "segzero", "visionreasoner"} <= set(PROMPTS)
    assert PROMPTS["samr1"].template == DEFAULT_PROMPT


def test_segzero_text_character_for_character():
    assert render_prompt("segzero", "The Man's Red Umbrella.") == SEGZERO_UMBRELLA


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("The Man's Red Umbrella.", "'the man's red umbrella'"),
        ('The "Big" Dog..', "'the \"big\" dog'"),  # str.strip(".") removes every trailing period
        (".Leading dot", "'leading dot'"),  # ... and leading ones
        ("Who is ON the left? ", "'who is on the left? '"),  # whitespace and "?" are kept
    ],
)
def test_segzero_query_normalisation(query, shown):
    assert render_prompt("segzero", query).startswith(f"Please find {shown} with bbox and points.Compare")


def test_visionreasoner_text_and_normalisation():
    assert render_prompt("visionreasoner", "The Cups.") == 'Please find "the cups"' + VISIONREASONER_TAIL
    # `.strip('."?!')`: quotes, question and exclamation marks go from both ends, inner ones stay.
    assert (
        render_prompt("visionreasoner", '"What is THIS?!"')
        == 'Please find "what is this"' + VISIONREASONER_TAIL
    )
    assert (
        render_prompt("visionreasoner", 'the "odd" one?')
        == 'Please find "the "odd" one"' + VISIONREASONER_TAIL
    )


def test_samr1_preset_keeps_the_query_as_written():
    assert render_prompt("samr1", "The Cup.").startswith(
        'Please find "The Cup." with bbox and points. Compare'
    )
    assert render_prompt("samr1", "x").endswith(
        '<answer>{"bbox": [10, 100, 200, 210], "points_1": [30, 110], "points_2": [35, 180]}</answer>'
    )


def test_literal_template_and_errors():
    assert render_prompt("Segment {query}, then answer {{'bbox': []}}.", "The Cat.") == (
        "Segment The Cat., then answer {'bbox': []}."
    )
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_prompt("segzer0")
    with pytest.raises(ValueError, match="literal braces"):
        resolve_prompt('find {query} as {"bbox": []}')


def test_prompt_builder_sends_the_rendered_text(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["policy"])
    sample = dataclasses.replace(make_shapes_sample(0, "test", 0, 56, 2, 3), query="The Red Circle.")
    batch = PromptBuilder(processor, template="segzero", image_size=(56, 56))([sample])
    assert "<|vision_end|>Please find 'the red circle' with bbox and points.Compare" in batch.texts[0]
    assert batch.texts[0].endswith(
        f"{render_prompt('segzero', 'x')[-60:]}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_bilinear_resampling_as_seg_zero_evaluates(tiny_checkpoints):
    from PIL import Image

    processor = load_processor(tiny_checkpoints["policy"])
    image = make_shapes_sample(0, "test", 0, 100, 2, 3).load_image()
    bilinear = PromptBuilder(processor, template="segzero", image_size=(56, 56), resample="bilinear")
    bicubic = PromptBuilder(processor, template="segzero", image_size=(56, 56))
    assert bilinear._resize(image).tobytes() == image.resize((56, 56), Image.Resampling.BILINEAR).tobytes()
    assert bicubic._resize(image).tobytes() == image.resize((56, 56), Image.Resampling.BICUBIC).tobytes()
    assert bilinear._resize(image).tobytes() != bicubic._resize(image).tobytes()
    with pytest.raises(ValueError, match="resampling"):
        PromptBuilder(processor, resample="nearest")


def test_the_module_refuses_an_unusable_prompt_at_start(tiny_checkpoints):
    from samr1.modules.module import GRPOModule

    with pytest.raises(ValueError, match="neither a preset"):
        GRPOModule(model_path=tiny_checkpoints["policy"], prompt_template="seg-zero")
