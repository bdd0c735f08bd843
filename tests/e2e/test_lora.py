"""LoRA: adapters on the language model, the reference is the policy with adapters off, export merges them."""

from __future__ import annotations

import lightning as L
import torch
from toy_rewards import DigitShareReward
from transformers import Qwen2_5_VLForConditionalGeneration

from samr1.cli import main
from samr1.datamodules import SyntheticShapesDataModule
from samr1.modules.logprobs import completion_logprobs
from samr1.modules.policy import GRPOModule
from samr1.modules.reference import ReferenceModel


def _fit(make_trainer, module: GRPOModule, root, steps: int = 4) -> L.Trainer:
    data = SyntheticShapesDataModule(
        num_train=16, image_size=56, batch_size=2, val_split=None, test_split=None
    )
    trainer = make_trainer(
        max_steps=steps,
        default_root_dir=root,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True)],
    )
    trainer.fit(module, datamodule=data)
    return trainer


def _module(tiny_checkpoints, **kwargs) -> GRPOModule:
    L.seed_everything(0)
    return GRPOModule(
        model_path=tiny_checkpoints["policy"],
        rewards=[DigitShareReward()],
        image_size=(56, 56),
        group_size=4,
        max_new_tokens=6,
        learning_rate=5e-2,
        kl_coef=0.1,
        **kwargs,
    )


def test_lora_trains_adapters_only_and_exports_merged(tiny_checkpoints, cpu_trainer, tmp_path):
    module = _module(tiny_checkpoints, lora_rank=4, lora_alpha=8)
    initial = {k: v.clone() for k, v in module_state(tiny_checkpoints).items()}
    trainer = _fit(cpu_trainer, module, tmp_path)
    trainable = [n for n, p in module.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)

    # The reference is the same network with adapters off: it equals the untouched initial weights.
    prompts, rollouts = module.last_step.prompts, module.last_step.rollouts
    ref = module._frozen["reference"].logprobs(prompts, rollouts.completion_ids, rollouts.prompt_index)
    base = ReferenceModel(tiny_checkpoints["policy"])
    expected = base.logprobs(prompts, rollouts.completion_ids, rollouts.prompt_index)
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        trained, _ = completion_logprobs(
            module.policy, prompts, rollouts.completion_ids, rollouts.prompt_index
        )
    assert (trained - expected).abs().max() > 1e-4, "the adapters did not change the policy"

    out = module.export_pretrained(str(tmp_path / "export"))
    loaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
    assert not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        reloaded, _ = completion_logprobs(loaded, prompts, rollouts.completion_ids, rollouts.prompt_index)
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=1e-5)
    # Base weights outside the adapted projections were never touched.
    state = loaded.state_dict()
    assert torch.equal(
        state["model.visual.patch_embed.proj.weight"], initial["model.visual.patch_embed.proj.weight"]
    )
    assert trainer.global_step == 4


def test_samr1_export_writes_a_loadable_directory(tiny_checkpoints, cpu_trainer, tmp_path):
    module = _module(tiny_checkpoints)
    _fit(cpu_trainer, module, tmp_path, steps=2)
    main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "hf")])
    loaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "hf")
    for name, value in module.policy.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


def module_state(tiny_checkpoints) -> dict[str, torch.Tensor]:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoints["policy"]).state_dict()
