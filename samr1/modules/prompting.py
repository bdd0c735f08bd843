"""From `SegSample`s to the model's input: resized images, chat prompts, processor tensors, coordinate transforms."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image

from samr1.sample import CoordTransform, SegSample

# samr1's own instruction: Seg-Zero's task statement (which SAM-R1 reuses) written with spaces, double quotes
# and a JSON example. Released Seg-Zero / VisionReasoner checkpoints were trained on their own texts below.
DEFAULT_PROMPT = (
    'Please find "{query}" with bbox and points. Compare the difference between objects and find the most '
    "closely matched one. Output the thinking process in <think> </think> and final answer in <answer> "
    "</answer> tags. Output the one bbox and points of two largest inscribed circles inside the interested "
    "object in JSON format. i.e., <think> thinking process here </think>"
    '<answer>{{"bbox": [10, 100, 200, 210], "points_1": [30, 110], "points_2": [35, 180]}}</answer>'
)


@dataclass(frozen=True)
class PromptPreset:
    """An instruction a model was trained with: a `str.format` template with one `{query}` field, and the
    normalisation its dataset code applies to the query first (lower-casing, then `str.strip(strip)`)."""

    template: str
    lowercase: bool = False
    strip: str = ""
    source: str = ""  # where the exact text comes from

    def normalise(self, query: str) -> str:
        query = query.lower() if self.lowercase else query
        return query.strip(self.strip) if self.strip else query

    def render(self, query: str) -> str:
        return self.template.format(query=self.normalise(query))


PROMPTS: dict[str, PromptPreset] = {
    "samr1": PromptPreset(DEFAULT_PROMPT, source="samr1"),
    # Seg-Zero's `verl/utils/rl_dataset.py` (training) and `evaluation_scripts/evaluation.py` (evaluation):
    # sentences concatenated without spaces, the query in single quotes after `.lower().strip(".")`, and the
    # example answer as a Python literal without spaces after the commas inside the lists.
    "segzero": PromptPreset(
        "Please find '{query}' with bbox and points."
        "Compare the difference between objects and find the most closely matched one."
        "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
        "Output the one bbox and points of two largest inscribed circles inside the interested object in "
        "JSON format."
        "i.e., <think> thinking process here </think>"
        "<answer>{{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}}</answer>",
        lowercase=True,
        strip=".",
        source="dvlab-research/Seg-Zero evaluation_scripts/evaluation.py",
    ),
    # VisionReasoner's `DETECTION_TEMPLATE` and its evaluation's `.lower().strip('."?!')`: a JSON list of
    # objects, one box (`bbox_2d`) and one point (`point_2d`) each.
    "visionreasoner": PromptPreset(
        'Please find "{query}" with bboxs and points.'
        "Compare the difference between object(s) and find the most closely matched object(s)."
        "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
        "Output the bbox(es) and point(s) inside the interested object(s) in JSON format."
        "i.e., <think> thinking process here </think>"
        '<answer>[{{"bbox_2d": [10,100,200,210], "point_2d": [30,110]}}, '
        '{{"bbox_2d": [225,296,706,786], "point_2d": [302,410]}}]</answer>',
        lowercase=True,
        strip='."?!',
        source="JIA-Lab-research/VisionReasoner vision_reasoner/models/vision_reasoner_model.py",
    ),
}


def resolve_prompt(template_or_name: str) -> PromptPreset:
    """A preset by name (`PROMPTS`), or a literal template with a `{query}` field (no query normalisation)."""
    if template_or_name in PROMPTS:
        return PROMPTS[template_or_name]
    if "{query}" not in template_or_name:
        raise ValueError(
            f"prompt_template {template_or_name[:60]!r} is neither a preset ({', '.join(PROMPTS)}) nor a "
            "template with a '{query}' field"
        )
    try:
        template_or_name.format(query="")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"prompt_template cannot be filled in ({err!r}): write literal braces as '{{{{' and '}}}}'"
        ) from err
    return PromptPreset(template_or_name)


def render_prompt(template_or_name: str, query: str) -> str:
    """The user text the model sees for `query`, the preset's query normalisation included."""
    return resolve_prompt(template_or_name).render(query)


# How images are resized for the policy: Seg-Zero's and VisionReasoner's evaluation scripts use bilinear.
RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

PATCH_FACTOR = 28  # Qwen2.5-VL: 14 px patches merged 2 x 2 -> one token per 28 x 28 pixels


@dataclass
class PromptBatch:
    """What the processor produced for a list of samples, with the samples (transforms set) kept alongside."""

    input_ids: torch.Tensor  # [B, L] left-padded
    attention_mask: torch.Tensor  # [B, L]
    pixel_values: torch.Tensor  # [sum of patches, patch_dim]
    image_grid_thw: torch.Tensor  # [num_images, 3]
    images_per_prompt: list[int]
    samples: list[SegSample]
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> PromptBatch:
        tensors = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **tensors)

    def image_indices(self, prompts: list[int]) -> list[int]:
        """The images (rows of `image_grid_thw`) of `prompts`, in their order."""
        first = [0]
        for n in self.images_per_prompt:
            first.append(first[-1] + n)
        return [i for p in prompts for i in range(first[p], first[p + 1])]

    def image_pixels(self, images: list[int]) -> torch.Tensor:
        """The `pixel_values` rows (patches) of `images`, concatenated in their order."""
        first = [0]
        for n in self.image_grid_thw.prod(-1).tolist():
            first.append(first[-1] + n)
        return torch.cat([self.pixel_values[first[i] : first[i + 1]] for i in images])

    @property
    def image_token_counts(self) -> torch.Tensor:
        """Vision tokens each image occupies in the prompt (after 2 x 2 merging)."""
        return self.image_grid_thw.prod(-1) // 4


def model_image_size(
    width: int, height: int, image_size: tuple[int, int] | None, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The (width, height) the model sees: `image_size` if fixed (SAM-R1: 840 x 840), else Qwen's smart resize."""
    if image_size is not None:
        w, h = image_size
        if w % PATCH_FACTOR or h % PATCH_FACTOR:
            raise ValueError(
                f"image_size {image_size} must be multiples of {PATCH_FACTOR} (Qwen2.5-VL patches)"
            )
        return w, h
    f = PATCH_FACTOR
    h_bar, w_bar = max(f, round(height / f) * f), max(f, round(width / f) * f)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar, w_bar = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    return w_bar, h_bar


class PromptBuilder:
    """Turns samples into a `PromptBatch` with a Qwen2.5-VL processor.

    Images are resized here (not by the processor) so the transform to the model's input space is exact and
    known: answers in that space map back to original pixels with `sample.transform.to_original`.
    """

    def __init__(
        self,
        processor,
        template: str = "samr1",
        image_size: tuple[int, int] | None = (840, 840),
        min_pixels: int = 56 * 56,
        max_pixels: int = 28 * 28 * 1280,
        system_prompt: str | None = None,
        resample: Literal["bicubic", "bilinear"] = "bicubic",
    ) -> None:
        if resample not in RESAMPLING:
            raise ValueError(f"image resampling must be one of {tuple(RESAMPLING)}, got {resample!r}")
        self.resample = RESAMPLING[resample]
        self.processor = processor
        self.template = template
        self.prompt = resolve_prompt(template)
        self.image_size = tuple(image_size) if image_size is not None else None
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.system_prompt = system_prompt

    def images_for(self, sample: SegSample) -> list[Image.Image]:
        """The images a prompt shows, in order. Multi-image datasets put extra ones in meta["extra_images"]."""
        return [*sample.meta.get("extra_images", []), sample.load_image()]

    def messages(self, sample: SegSample, n_images: int) -> list[dict]:
        content = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": self.prompt.render(sample.query)})
        msgs = [{"role": "user", "content": content}]
        if self.system_prompt:
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return msgs

    def __call__(self, samples: list[SegSample]) -> PromptBatch:
        if not samples:
            raise ValueError("cannot build prompts for an empty batch")
        images, texts, prepared, per_prompt = [], [], [], []
        for sample in samples:
            shown = self.images_for(sample)
            resized = [self._resize(im) for im in shown]
            # The segmented image is the last one shown; the transform is the one of that image.
            seg = shown[-1]
            transform = CoordTransform(original_size=seg.size, model_size=resized[-1].size)
            prepared.append(dataclasses.replace(sample, transform=transform))
            images.extend(resized)
            per_prompt.append(len(resized))
            texts.append(
                self.processor.apply_chat_template(
                    self.messages(sample, len(resized)), tokenize=False, add_generation_prompt=True
                )
            )
        enc = self.processor(
            text=texts, images=images, padding=True, padding_side="left", return_tensors="pt"
        )
        grid = enc["image_grid_thw"]
        for im, (_, gh, gw) in zip(images, grid.tolist()):
            if (gw * 14, gh * 14) != im.size:
                raise ValueError(
                    f"the processor resized a {im.size} image to {(gw * 14, gh * 14)}; set min_pixels/max_pixels "
                    "so that the chosen image size is kept"
                )
        return PromptBatch(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            pixel_values=enc["pixel_values"],
            image_grid_thw=grid,
            images_per_prompt=per_prompt,
            samples=prepared,
            texts=texts,
        )

    def _resize(self, image: Image.Image) -> Image.Image:
        size = model_image_size(*image.size, self.image_size, self.min_pixels, self.max_pixels)
        return image if image.size == size else image.resize(size, self.resample)
