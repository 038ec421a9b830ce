"""
The prompts whose original ids `make_reference_ids.py` records: hand-written cases and seeded random ones over the
same alphabet of pieces (standard library only, so it runs in the transformers 4.39.3 environment too).
"""

import random

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
RANDOM_SEED = 16
RANDOM_COUNT = 2000


def vicuna_v1(turns: list[tuple[str, str | None]], system: str = SYSTEM) -> str:
    """The original `conv_templates["v1"].get_prompt()`: sep_style TWO, seps " " and "</s>"."""
    prompt = system + " "
    for index, (role, message) in enumerate(turns):
        prompt += f"{role}: {message}{(' ', '</s>')[index % 2]}" if message else f"{role}:"
    return prompt


def ask(question: str) -> str:
    """One user turn and the open assistant turn."""
    return vicuna_v1([("USER", question), ("ASSISTANT", None)])


BOX = "[0.12, 0.34, 0.56, 0.78]"

#: (name, prompt) pairs covering the issue's list of cases.
HAND_CASES = [
    ("single_turn_image_newline", ask("<image>\nWhat is shown in this image?")),
    ("single_turn_text_only", ask("Tell me a joke.")),
    (
        "multi_turn",
        vicuna_v1(
            [
                ("USER", "<image>\nWhat colour is the sky?"),
                ("ASSISTANT", "The sky is blue."),
                ("USER", "And the grass?"),
                ("ASSISTANT", None),
            ]
        ),
    ),
    ("image_at_message_end", ask("What is this? <image>")),
    ("image_ends_message_then_assistant", ask("Describe this<image>")),
    ("image_in_the_middle", ask("Look at <image> and tell me what it is.")),
    ("image_space_question", "<image> What is this?"),
    ("image_without_newline", ask("<image>What is this?")),
    ("image_then_space", ask("<image> What is this?")),
    ("several_images", ask("<image>\n<image>\nCompare the two images.")),
    ("adjacent_images", ask("<image><image> Which is larger?")),
    (
        "images_in_two_turns",
        vicuna_v1(
            [("USER", "<image>\nFirst?"), ("ASSISTANT", "A cat."), ("USER", "<image> Second?"), ("ASSISTANT", None)]
        ),
    ),
    ("leading_spaces", ask("   What is this?")),
    ("trailing_spaces", ask("What is this?   ")),
    ("repeated_spaces", ask("What  is   this    image?")),
    ("spaces_after_image", ask("<image>   What is this?")),
    ("tabs", ask("<image>\n\tWhat\tis\tthis?\t")),
    ("blank_lines", ask("<image>\n\n\nWhat is this?\n\n")),
    ("digits_and_punctuation", ask("Count: 1, 22, 333; 3.14159! (yes) -- 'quoted' \"double\" 50% #1 & @home?")),
    ("cjk", ask("<image>\n这张图片里有什么？请用中文回答。")),
    ("emoji", ask("<image>\nIs this a 🦙 or a 🐪? 😀👍🏽")),
    ("mixed_scripts", ask("Äpfel, naïve café, Привет, こんにちは, 안녕하세요, مرحبا")),
    ("literal_eos_in_user_text", ask("What does </s> mean in a prompt?")),
    ("literal_bos_in_user_text", ask("Is <s> a tag?")),
    ("literal_tokens_after_image", ask("<image></s> and <s> here")),
    (
        "grounding_question",
        ask("<image>\nPlease provide the bounding box coordinate of the region this sentence describes: the red car."),
    ),
    (
        "grounding_answer",
        vicuna_v1(
            [("USER", "<image>\nWhere is the dog?"), ("ASSISTANT", BOX), ("USER", "And the cat?"), ("ASSISTANT", None)]
        ),
    ),
    (
        "grounding_answer_with_text",
        vicuna_v1([("USER", "<image>\nFind the cup."), ("ASSISTANT", f"The cup is at {BOX}.")]),
    ),
    ("empty_text", ""),
    ("only_image", "<image>"),
    ("only_spaces", "   "),
    ("text_starting_with_a_space", " Hello world"),
    ("text_starting_with_eos", "</s> ASSISTANT:"),
    ("sentencepiece_marker_in_text", ask("a\u2581b \u2581c")),
]

#: Completions a fine-tuning run (TRL's prompt-completion and DPO data) appends to a prompt.
COMPLETIONS = [" The circle is red.", " It is a photo of [0.1, 0.2, 0.3, 0.4].", " 是的。", " 42"]

#: The alphabet of pieces random prompts and messages are drawn from.
FRAGMENTS = [
    "<image>", "<image>\n", "<image> ", "\n", "\n\n", " ", "  ", "   ", "\t", " \t", "What", " is", " this", "?",
    " image", "Describe", " the", " picture", ".", ",", "!", ":", "'s", " 1", "23", " 4.5", "2024", "(", ")", "-",
    "USER:", " USER:", "ASSISTANT:", " ASSISTANT:", "</s>", "<s>", " </s>", "图片", "里有什么", "🦙", " 😀", "é",
    "Äpfel", " naïve", BOX, " [0.05, 0.9, 0.33, 1.0]", "\u2581", "A", "a", "b", "ASS", "ISTANT", " Hello", "world",
]  # fmt: skip


def random_prompts(count: int = RANDOM_COUNT, seed: int = RANDOM_SEED) -> list[tuple[str, str]]:
    """`count` (name, prompt) pairs: half free strings of fragments, half vicuna-v1 chats whose messages are."""
    rng = random.Random(seed)

    def text(longest: int) -> str:
        return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, longest)))

    prompts = []
    for index in range(count):
        if index % 2:
            turns = [("USER" if turn % 2 == 0 else "ASSISTANT", text(6) or "Hi") for turn in range(rng.randint(1, 4))]
            prompts.append((f"random_chat_{index}", vicuna_v1(turns + [("ASSISTANT", None)] * (len(turns) % 2))))
        else:
            prompts.append((f"random_text_{index}", text(12)))
    return prompts


def conversations() -> list[tuple[str, str, str]]:
    """(name, prompt, completion) for fine-tuning: a prompt ending with the assistant turn, and its answer."""
    prompts = [ask("<image>\nWhat colour is the circle?"), ask("What is this?"), ask("<image> Where is it?")]
    return [
        (f"conversation_{p}_{c}", prompt, completion + "</s>")
        for p, prompt in enumerate(prompts)
        for c, completion in enumerate(COMPLETIONS)
    ]


def all_prompts() -> list[tuple[str, str]]:
    """Every (name, prompt) the reference holds: hand cases, random ones, and each whole conversation."""
    whole = [(name, prompt + completion) for name, prompt, completion in conversations()]
    return HAND_CASES + random_prompts() + whole
