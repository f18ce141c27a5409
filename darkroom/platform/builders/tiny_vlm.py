"""A random-init tiny vision-language model, built offline and saved like a hub checkpoint, for
the judge's tests and smoke runs: a Qwen2-VL (Wang et al. 2024) of about 110k parameters with a
byte-level tokenizer, Qwen's chat tokens and a chat template made here.

It loads through the real path (`AutoModelForImageTextToText` and `AutoProcessor`); its answers
mean nothing, its code path is the one a 7B checkpoint takes.
"""

from __future__ import annotations

from pathlib import Path

from darkroom.platform.builders.tiny import byte_symbols

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>")
# Whole-word tokens, as real VLM vocabularies have them: the answers judges read are one token.
WORDS = ("Yes", "No", "yes", "no", " Yes", " No", " yes", " no", "one", "two", "three", "four",
         "five", "1", "2", "3", "4", "5", "red", "green", "blue")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_vlm_tokenizer():
    """A byte-level BPE tokenizer (the 256 byte symbols, no merges) with Qwen's chat and vision
    tokens and a few whole words, built with no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(byte_symbols())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", model_max_length=4096)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL[1:])})
    tokenizer.add_tokens(list(WORDS))
    return tokenizer


def tiny_vlm(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny Qwen2-VL with random weights (seeded) and save model, tokenizer, image
    processor and chat template to `folder`, as `save_pretrained` leaves a hub checkpoint."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    folder = Path(folder)
    tokenizer = tiny_vlm_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2VLConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2,
                     "vocab_size": len(tokenizer), "max_position_embeddings": 4096,
                     "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
                     "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "mlp_ratio": 2, "in_channels": 3},
        **ids)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(),
                                 chat_template=CHAT_TEMPLATE)
    _answer_shaped(model, processor, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _answer_shaped(model, processor, seed: int) -> None:
    """Random logits are nearly flat, and answers would all score about 1/vocabulary. Widen the
    output layer (so the next token depends on the image and question) and lift the answer
    words' logits to about the top one on random probes: their probabilities then
    range over a few tenths and differ by image and question, so a test can tell a wrong
    reading from the right one."""
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(seed)
    questions = ["Is there a cat? Answer in one word.", "How many dogs are in the image?",
                 'Does this figure show "a red fox"? Please answer Yes or No.',
                 'Does this figure show "two cats on a sofa"? Please answer Yes or No.']
    hidden, top = [], []
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
        for question in questions:
            image = Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
            chat = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": question}]}]
            text = processor.apply_chat_template(chat, add_generation_prompt=True,
                                                 tokenize=False)
            out = model(**processor(images=[image], text=[text], return_tensors="pt"),
                        output_hidden_states=True)
            hidden.append(out.hidden_states[-1][0, -1])
            top.append(out.logits[0, -1].max())
        hidden, target = torch.stack(hidden), torch.stack(top).mean()
        mean = hidden.mean(dim=0)
        for word in WORDS:
            row = model.lm_head.weight[processor.tokenizer.convert_tokens_to_ids(word)]
            row.mul_(2.0)  # more spread by image and question
            row.add_((target - (hidden @ row).mean()) * mean / mean.dot(mean))
